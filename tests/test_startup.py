"""The tools' start-up: TensorFlow's lines kept quiet unless asked, Ctrl-C while starting, the XLA cache per CPU."""

import hashlib
import importlib.util
import os
import pkgutil
import platform
import shutil
import signal
import socket
import subprocess
import sys
import types

import pytest
import tensorflow as tf
from absl import flags

from conftest import ROOT, TF_STARTUP, assert_one_line_error, run_cli
import mnist_dnn
from mnist_dnn.cli import startup
from mnist_dnn.lib import processes, xla_cache



@pytest.mark.parametrize("argv, env, wanted", [
    (["p"], {}, False),
    (["p", "--verbosity=1"], {}, True),
    (["p", "-v=2"], {}, True),
    (["p", "--verbosity", "1"], {}, True),
    (["p", "--verbosity=0"], {}, False),
    (["p", "--verbosity=-1"], {}, False),
    (["p", "v=3"], {}, False),
    (["p"], {startup.TF_LOGS_ENV: "1"}, True),
    (["p"], {startup.TF_LOGS_ENV: "0"}, False),
    (["p"], {"TF_CPP_MIN_LOG_LEVEL": "0"}, True),
    (["p"], {"TF_CPP_MIN_LOG_LEVEL": "1"}, True),
    (["p"], {"TF_CPP_MIN_LOG_LEVEL": "2"}, False),
    (["p"], {"TF_CPP_MIN_LOG_LEVEL": "3"}, False),
])
def test_tensorflow_logs_are_shown_only_when_asked(argv, env, wanted):
    assert startup.wants_tf_logs(argv, env) is wanted


def test_captured_stderr_is_dropped_unless_the_block_fails(capfd):
    with processes.captured_stderr():
        os.write(2, b"C++ noise\n")
    os.write(2, b"ours after it\n")
    assert capfd.readouterr().err == "ours after it\n"
    with pytest.raises(ImportError):
        with processes.captured_stderr():
            os.write(2, b"why it failed\n")
            raise ImportError("no luck")
    assert capfd.readouterr().err == "why it failed\n"


@pytest.mark.slow
def test_a_short_run_prints_no_tensorflow_startup_lines(tiny_data, tmp_path):
    result = run_cli("train", "--max_steps=20", "--log_every=10", f"--data_dir={tiny_data.data_dir}",
                     f"--ckpt_dir={tmp_path / 'ckpt'}", f"--log_dir={tmp_path / 'logs'}", cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "Done at step 20" in result.stdout
    assert result.stderr == ""


@pytest.mark.slow
@pytest.mark.parametrize("ask", [["--verbosity=1"], []])
def test_tensorflow_startup_lines_come_back_when_asked(ask):
    env = {} if ask else {startup.TF_LOGS_ENV: "1"}
    result = run_cli("evaluate", *ask, "--helpfull", env_extra=env)
    assert TF_STARTUP.search(result.stderr), result.stderr


@pytest.mark.slow
def test_our_errors_and_later_python_errors_still_reach_stderr(tmp_path):
    assert_one_line_error(run_cli("train", "--max_steps=0", f"--ckpt_dir={tmp_path / 'c'}"), 2, "--max_steps")
    late = subprocess.run([sys.executable, "-c", "import mnist_dnn, sys; print('ours', file=sys.stderr); 1 / 0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert late.stderr.startswith("ours\nTraceback") and "ZeroDivisionError" in late.stderr
    assert not TF_STARTUP.search(late.stderr)


@pytest.mark.slow
def test_a_failed_tensorflow_import_shows_what_it_printed(tmp_path):
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text("import os\nos.write(2, b'libfoo.so: cannot open shared object\\n')\n"
                                      "raise ImportError('DLL load failed')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    # A tool imports TensorFlow as it starts (cli.run), not on importing the package.
    result = subprocess.run([sys.executable, "-m", "mnist_dnn.report", "--root=x"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("libfoo.so: cannot open shared object\nTraceback")
    assert "ImportError: DLL load failed" in result.stderr


def test_xla_programs_are_cached_per_cpu_under_the_users_cache_unless_told_otherwise(tmp_path):
    home = {"XDG_CACHE_HOME": str(tmp_path)}
    assert startup.xla_cache_folder(home, "x86_64-abc") == str(tmp_path / "mnist_dnn" / "xla" / "x86_64-abc")
    chosen = {**home, startup.XLA_CACHE_ENV: "/elsewhere"}
    assert startup.xla_cache_folder(chosen, "x86_64-abc") == "/elsewhere/x86_64-abc"  # a chosen folder too
    assert startup.xla_cache_folder(home, None) is None  # an unknown CPU: no cache
    for off in ("off", "0", "", "OFF", " Off "):
        assert startup.xla_cache_folder({startup.XLA_CACHE_ENV: off}, "x86_64-abc") is None


def test_the_cache_key_is_the_architecture_a_digest_of_every_instruction_set_flag_and_tensorflows_version(tmp_path):
    """XLA runs a cached program compiled for other CPU features (it only logs), and its entries' names say
    nothing of the XLA that wrote them: each instruction set and each TensorFlow version gets its own folder."""
    keys = []
    for flags, version in [("fpu sse2 avx2", "2.21.0"), ("fpu sse2 avx2 avx512f", "2.21.0"),
                           ("fpu sse2 avx2 amx_tile", "2.21.0"), ("fpu sse2 avx2", "2.20.0"), ("fpu sse2 avx2", None)]:
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        digest = hashlib.sha256(f"flags\t\t: {flags}\n".encode()).hexdigest()[:12]
        keys.append(startup.cache_key(str(cpuinfo), version))
        assert keys[-1] == f"{platform.machine()}-{digest}-tf{version or tf.__version__}"  # None: the installed one
    assert len(set(keys)) == 4 and keys[0] == keys[-1]
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert startup.cache_key(str(tmp_path / "noflags")) is None
    assert startup.cache_key(str(tmp_path / "missing")) is None


def test_the_xla_cache_flag_joins_the_users_flags_and_never_replaces_theirs():
    env = {startup.XLA_CACHE_ENV: "/c", "TF_XLA_FLAGS": "--tf_xla_auto_jit=2"}
    startup.use_xla_cache(env, key="k")
    assert env["TF_XLA_FLAGS"] == "--tf_xla_auto_jit=2 --tf_xla_persistent_cache_directory=/c/k"
    theirs = {startup.XLA_CACHE_ENV: "/c", "TF_XLA_FLAGS": "--tf_xla_persistent_cache_directory=/mine"}
    startup.use_xla_cache(theirs, key="k")
    assert theirs["TF_XLA_FLAGS"] == "--tf_xla_persistent_cache_directory=/mine"
    off = {startup.XLA_CACHE_ENV: "off"}
    startup.use_xla_cache(off, key="k")
    assert "TF_XLA_FLAGS" not in off


def test_an_xla_cache_folder_that_cannot_be_written_is_not_used(tmp_path, capsys):
    """XLA fails every compilation on a cache it cannot write: the run goes without one."""
    (tmp_path / "afile").write_text("")
    before = sorted(os.listdir(tmp_path))
    chosen = {startup.XLA_CACHE_ENV: str(tmp_path / "afile" / "xla")}
    startup.use_xla_cache(chosen, key="k")
    assert "TF_XLA_FLAGS" not in chosen and "is not a folder that can be written" in capsys.readouterr().err
    default = {"XDG_CACHE_HOME": str(tmp_path / "afile")}  # the default place, under a file: quietly none
    startup.use_xla_cache(default, key="k")
    assert "TF_XLA_FLAGS" not in default and capsys.readouterr().err == ""
    new = {startup.XLA_CACHE_ENV: str(tmp_path / "new" / "xla")}  # not there yet: XLA creates it
    startup.use_xla_cache(new, key="k")
    assert new["TF_XLA_FLAGS"].endswith(str(tmp_path / "new" / "xla" / "k"))
    assert sorted(os.listdir(tmp_path)) == before  # nothing created by the check


@pytest.mark.parametrize("level, expected", [(None, "3"), ("2", "3"), ("3", "3"), ("1", "1"), ("0", "0")])
def test_the_tools_start_up_hides_tensorflows_lines_unless_levels_0_or_1_ask_for_them(level, expected):
    """quiet_tensorflow changes the environment it is given (the tool's process), nothing else."""
    environ_before = dict(os.environ)
    env = {startup.XLA_CACHE_ENV: "off", **({} if level is None else {"TF_CPP_MIN_LOG_LEVEL": level})}
    startup.quiet_tensorflow(["tool"], env)  # TensorFlow is imported already in this process
    assert env["TF_CPP_MIN_LOG_LEVEL"] == expected
    assert dict(os.environ) == environ_before


TOOL_MODULES = sorted(m.name for m in [*pkgutil.iter_modules(mnist_dnn.__path__, "mnist_dnn."),
                                        *pkgutil.iter_modules(mnist_dnn.cli.__path__, "mnist_dnn.cli.")] if not m.ispkg)


@pytest.mark.parametrize("module", TOOL_MODULES)
def test_the_tool_modules_import_no_tensorflow_before_the_start_up(module):
    """Else TensorFlow starts before cli.run can keep its lines off the terminal."""
    probe = (f"import sys, {module}\n"
             "print(sorted(m for m in ('tensorflow', 'keras', 'tensorflow_datasets') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


# issue 27: the XLA cache never fails a run (the real faults: tests/test_faults.py).
def _xla_temporary(folder, host: str, pid: int):
    path = folder / f"xla_compile_cache__1__2__XLA_CPU_JIT.pb{host}-a9b-{pid}-66c.tmp"
    path.write_bytes(b"half")
    return path


def test_before_tensorflow_starts_the_xla_cache_loses_dead_processes_temporary_files(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = _xla_temporary(tmp_path, socket.gethostname(), int(dead.stdout))
    alive = _xla_temporary(tmp_path, socket.gethostname(), os.getpid())
    elsewhere = _xla_temporary(tmp_path, "another-host", int(dead.stdout))  # its pid means nothing here
    assert xla_cache.prepare(str(tmp_path)) == f"--tf_xla_persistent_cache_directory={tmp_path}"
    assert not gone.exists() and alive.exists() and elsewhere.exists()


def test_an_xla_cache_short_of_space_is_only_read(tmp_path, monkeypatch):
    monkeypatch.setattr(xla_cache, "MIN_FREE_BYTES", shutil.disk_usage(tmp_path).free + 1)
    assert xla_cache.prepare(str(tmp_path / "new")).endswith(" --tf_xla_persistent_cache_read_only=true")


def test_after_a_cache_fault_its_damaged_entries_and_our_temporary_files_go_and_the_rest_stays(tmp_path):
    good = tmp_path / "xla_compile_cache__1__1__XLA_CPU_JIT.pb"
    good.write_bytes(b"\x0a\x03abc\x12\x02hi")  # well-formed protocol-buffer bytes
    damaged = {"empty": b"", "truncated": b"\x0a\x09abc", "garbled": b"\xff\xff\xff\xff\x0f\x07"}
    for name, content in damaged.items():
        (tmp_path / f"xla_compile_cache__{name}__XLA_CPU_JIT.pb").write_bytes(content)
    ours = _xla_temporary(tmp_path, socket.gethostname(), os.getpid())
    flags = f"--tf_xla_auto_jit=2 --tf_xla_persistent_cache_directory={tmp_path}"
    warning = xla_cache.recover(tf.errors.OutOfRangeError(None, None, "Read less bytes than requested"), flags)
    assert f"cache {tmp_path} failed (OutOfRangeError); removed 4 " in warning
    assert sorted(os.listdir(tmp_path)) == [good.name]
    assert xla_cache.recover(tf.errors.ResourceExhaustedError(None, None, "OOM"), flags) is None  # not the cache's
    named = tf.errors.DataLossError(None, None, f"Can't parse {good} as binary proto")
    assert "removed 1 " in xla_cache.recover(named, flags) and not good.exists()
    assert xla_cache.recover(named, "--tf_xla_auto_jit=2") is None  # no cache


def test_the_start_up_ctrl_c_handler_is_a_tools_own_and_leaves_an_importing_process_alone(monkeypatch):
    """Its effect, one line and 130 at any moment of the start-up, is tested in test_faults.py -k ctrl_c."""
    handler = signal.getsignal(signal.SIGINT)
    startup.interrupt_quietly()  # cli.app imported by a program (here, the tests)
    startup.end_of_start_up()
    assert signal.getsignal(signal.SIGINT) is handler
    tool = types.ModuleType("__main__")
    tool.__spec__ = importlib.util.find_spec("mnist_dnn.train")
    monkeypatch.setitem(sys.modules, "__main__", tool)  # as `python -m mnist_dnn.train` runs it, importing cli.app
    try:
        startup.interrupt_quietly()
        assert signal.getsignal(signal.SIGINT) not in (handler, signal.default_int_handler)
        startup.end_of_start_up()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, handler)
    assert startup.is_tool_process("mnist_dnn.train", "/x/python")  # python -m mnist_dnn.train
    assert startup.is_tool_process(None, "/venv/bin/mnist-dnn-train")  # the installed script
    assert not startup.is_tool_process("pytest", "/venv/bin/pytest")
    assert not startup.is_tool_process("mnist_dnn.lib.config", "/x/python") and not startup.is_tool_process(None, "-c")


# issue 27: `tool | head -1` (BrokenPipeError) ends quietly, as Unix tools do.
