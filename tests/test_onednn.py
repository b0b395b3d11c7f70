"""oneDNN's switch (--onednn, mnist_dnn.use_onednn): its table, the environment it sets, and what runs."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli
from mnist_dnn.lib import onednn

X86_AVX2 = {"sse2", "avx", "avx2", "fma"}
TF_SAYS_ON = "oneDNN custom operations are on"


@pytest.mark.parametrize("choice, flags, machine, expected", [
    ("auto", X86_AVX2, "x86_64", True),  # measured: benchmarks/cnn_speed.json
    ("auto", X86_AVX2 | {"avx512f", "avx512_vnni"}, "x86_64", True),
    ("auto", {"sse2", "avx"}, "x86_64", None),  # not measured: TensorFlow's default
    ("auto", {"asimd"}, "aarch64", None),
    ("on", set(), "aarch64", True), ("off", X86_AVX2, "x86_64", False)])
def test_auto_turns_onednn_on_for_x86_cpus_with_avx2_and_leaves_tensorflows_default_elsewhere(choice, flags, machine,
                                                                                              expected):
    assert onednn.wanted(choice, flags, machine) is expected


def test_the_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nbugs\t\t: spectre\n")
    assert onednn.cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx2", "fma"}
    assert onednn.cpu_flags(str(tmp_path / "none")) == set()


def test_choose_sets_the_variable_and_auto_keeps_one_already_set():
    environ = {}
    onednn.choose("off", environ)
    assert environ == {onednn.ENV: "0"}
    onednn.choose("auto", environ)
    assert environ == {onednn.ENV: "0"}
    onednn.choose("on", environ)
    assert environ == {onednn.ENV: "1"}
    with pytest.raises(ValueError, match="one of auto, on, off"):
        onednn.choose("yes", environ)


def test_this_session_runs_the_kernels_its_environment_chose():
    """conftest chooses as the tools do (auto), before TensorFlow starts; a variable set beforehand wins."""
    if onednn.ENV not in os.environ:
        pytest.skip(f"auto leaves TensorFlow's default on this CPU ({onednn.ENV} unset)")
    assert onednn.running() is (os.environ[onednn.ENV] == "1")


def test_use_onednn_sets_the_variable_before_tensorflow_is_imported_and_refuses_after(monkeypatch):
    """In this process (TensorFlow imported): the refusal, and the variable set as if it were not yet.
    That TensorFlow then runs the kernels it chose: the session's own choice above, and in a fresh process below."""
    import mnist_dnn
    monkeypatch.setenv(onednn.ENV, "1")
    with pytest.raises(mnist_dnn.Error, match="^use_onednn must be called before TensorFlow is imported: call it "
                                              "first in the program$"):
        mnist_dnn.use_onednn("off")
    assert os.environ[onednn.ENV] == "1"
    monkeypatch.delitem(sys.modules, "tensorflow")
    for choice, expected in (("off", "0"), ("on", "1"), ("auto", "1")):  # auto keeps a value set
        mnist_dnn.use_onednn(choice)
        assert os.environ[onednn.ENV] == expected


@pytest.mark.slow
def test_use_onednn_sets_the_switch_before_tensorflow_starts_and_refuses_after():
    probe = ("import mnist_dnn\n"
             "mnist_dnn.use_onednn('on')\n"
             "from tensorflow.python.util import _pywrap_util_port\n"
             "print(_pywrap_util_port.IsMklEnabled())\n"
             "try:\n    mnist_dnn.use_onednn('off')\nexcept mnist_dnn.Error as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != onednn.ENV}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "True", "use_onednn must be called before TensorFlow is imported: call it first in the program"]


@pytest.mark.slow
@pytest.mark.parametrize("choice", ["on", "off"])
def test_the_start_line_names_the_kernels_that_tensorflow_says_it_runs(tiny_data, tmp_path, choice):
    result = run_cli("train", f"--onednn={choice}", f"--data_dir={tiny_data.data_dir}", "--model=cnn",
                     "--conv_filters=4", "--hidden_units=8", "--max_steps=2", "--batch_size=16",
                     f"--ckpt_dir={tmp_path}/ckpt", f"--log_dir={tmp_path}/logs",
                     env_extra={"MNIST_DNN_TF_LOGS": "1", onednn.ENV: "1" if choice == "off" else "0"}, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    start = next(line for line in result.stdout.splitlines() if line.startswith("Training cnn"))
    tensorflow_on = TF_SAYS_ON in result.stderr
    assert tensorflow_on is (choice == "on")  # the flag wins over the variable
    assert start.endswith(f"graph loop on {'oneDNN' if tensorflow_on else 'Eigen'} kernels; "
                          f"TensorBoard: {tmp_path}/logs"), start


# The guards, run again on the kernels that this session does not use: the NaN guard, exact resume and
# --deterministic (the tests of the SIGKILL resume start tools, which inherit the session's choice).
GUARDS = ["tests/test_steps.py::test_a_non_finite_loss_stops_either_runner_before_it_updates_anything",
          "tests/test_steps.py::test_a_non_finite_gradient_with_a_finite_loss_stops_either_runner_before_it_updates_anything",
          "tests/test_training.py::test_a_diverging_run_stops_with_the_step_and_saves_no_non_finite_weights",
          "tests/test_cnn.py::test_a_resumed_cnn_run_is_bit_identical_to_an_uninterrupted_one",
          "tests/test_cnn.py::test_a_cnn_killed_mid_run_resumes_to_bit_identical_weights",
          "tests/test_onednn.py::test_this_session_runs_the_kernels_its_environment_chose"]


@pytest.mark.slow
def test_the_guards_hold_on_the_other_kernels_too():
    other = "0" if onednn.running() else "1"
    env = {**os.environ, onednn.ENV: other}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "", "-p", "no:cacheprovider", *GUARDS],
                            capture_output=True, text=True, cwd=ROOT, env=env, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "8 passed" in result.stdout, result.stdout[-3000:]
