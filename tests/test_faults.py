"""Training that never loses work: kills, damaged checkpoints, locks, full disks (subprocesses)."""

import contextlib
import errno
import glob
import json
import os
import pathlib
import random
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, assert_one_line_error, run_cli
from mnist_dnn.lib.core import checkpoints
from mnist_dnn.lib.core.run_dir import RunDir

pytestmark = pytest.mark.slow

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root (CI runs as root)")


@contextlib.contextmanager
def tiny_disk(folder: pathlib.Path, size: str):
    """A tmpfs of `size` (e.g. 8k) mounted on `folder`: a disk that fills up; unmounted afterwards."""
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# Kill points tried by the SIGKILL test; docs/faults.md quotes this number.
KILLS = 6


def _train_args(data_dir, ckpt_dir, *extra):
    return [sys.executable, "-m", "mnist_dnn.train", f"--data_dir={data_dir}", f"--ckpt_dir={ckpt_dir}",
            f"--log_dir={ckpt_dir}-logs", "--hidden_units=32", "--dropout=0.2", "--batch_size=64",
            "--deterministic", "--log_every=1", "--eval_every=1000", *extra]


def _model_values(ckpt_dir):
    reader = tf.train.load_checkpoint(RunDir(str(ckpt_dir)).latest())
    names = [n for n in reader.get_variable_to_shape_map() if n.startswith(("model/", "optimizer/", "step"))]
    return {n: reader.get_tensor(n) for n in names}


def _start(args):
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def _wait_for_checkpoint(process, ckpt_dir, newer_than: int = -1) -> int:
    """Waits until the run folder holds a checkpoint past `newer_than`; returns its step."""
    deadline = time.time() + 300
    while time.time() < deadline:
        steps = RunDir(str(ckpt_dir)).steps() if os.path.isdir(ckpt_dir) else []
        if steps and steps[-1] > newer_than:
            return steps[-1]
        if process.poll() is not None:
            raise AssertionError(f"the trainer ended early: {process.returncode}, {process.stderr.read()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def test_sigkill_at_any_point_resumes_to_bit_identical_weights(tiny_data, tmp_path):
    max_steps = ["--max_steps=400", "--checkpoint_every=3"]
    whole = subprocess.run(_train_args(tiny_data.data_dir, tmp_path / "whole", *max_steps),
                           capture_output=True, text=True, cwd=ROOT)
    assert whole.returncode == 0, whole.stderr[-2000:]

    killed_dir = tmp_path / "killed"
    args = _train_args(tiny_data.data_dir, killed_dir, *max_steps, "--steps_per_call=1")
    rng = random.Random(0)
    killed_at = []
    for kill in range(KILLS):
        # Every other run saves at every step, so its kill lands in the middle of a save.
        process = _start(args + (["--checkpoint_every=1"] if kill % 2 else []))
        _wait_for_checkpoint(process, killed_dir, max(killed_at, default=-1))
        time.sleep(rng.uniform(0.0, 0.3))  # lands between steps, in saves, in validation
        process.send_signal(signal.SIGKILL)
        process.communicate()
        killed_at.append(RunDir(str(killed_dir)).steps()[-1])
        if kill == KILLS - 1:  # the last kill also loses TensorFlow's state file
            os.remove(killed_dir / "checkpoint")
    assert max(killed_at) < 400, killed_at  # every kill landed before the end
    result_file = tmp_path / "result.json"
    finished = subprocess.run(args + [f"--result_file={result_file}"], capture_output=True, text=True, cwd=ROOT)
    assert finished.returncode == 0, finished.stderr[-2000:]
    result = json.loads(result_file.read_text())
    assert result["start_step"] == killed_at[-1] and result["resumed_from"].endswith(f"model.ckpt-{killed_at[-1]}")
    print("killed after steps", killed_at)

    expected, got = _model_values(tmp_path / "whole"), _model_values(killed_dir)
    assert got.keys() == expected.keys() and len(expected) > 10
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_a_damaged_newest_checkpoint_is_skipped_for_the_newest_complete_one(tiny_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    base = ["--checkpoint_every=5", "--steps_per_call=5"]
    assert subprocess.run(_train_args(tiny_data.data_dir, ckpt, "--max_steps=10", *base), cwd=ROOT).returncode == 0
    data_file = glob.glob(str(ckpt / "model.ckpt-10.data-*"))[0]
    with open(data_file, "r+b") as f:
        f.truncate(100)
    result_file = tmp_path / "result.json"
    resumed = subprocess.run(_train_args(tiny_data.data_dir, ckpt, "--max_steps=15", *base,
                                         f"--result_file={result_file}"), capture_output=True, text=True, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "skipping" in resumed.stderr and "model.ckpt-10: it is damaged" in resumed.stderr
    assert json.loads(result_file.read_text())["start_step"] == 5


def test_a_second_trainer_on_the_same_folder_is_refused_until_the_first_dies(tiny_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    first = _start(_train_args(tiny_data.data_dir, ckpt, "--max_steps=100000000", "--checkpoint_every=5"))
    try:
        _wait_for_checkpoint(first, ckpt)
        second = run_cli("train", *_train_args(tiny_data.data_dir, ckpt, "--max_steps=20")[3:], cwd=ROOT)
        assert_one_line_error(second, 1, "another training run is using", str(ckpt))
        for leftover in glob.glob(str(ckpt / "*.lock")):  # deleting files cannot let a second trainer in
            os.remove(leftover)
        third = run_cli("train", *_train_args(tiny_data.data_dir, ckpt, "--max_steps=20")[3:], cwd=ROOT)
        assert_one_line_error(third, 1, "another training run is using")
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    after = run_cli("train", *_train_args(tiny_data.data_dir, ckpt, "--max_steps=5")[3:], cwd=ROOT)
    assert after.returncode == 0, after.stderr[-2000:]


@ROOT_ONLY
def test_a_full_disk_is_a_clear_error_and_earlier_checkpoints_stay_intact(tiny_data, tmp_path):
    with tiny_disk(tmp_path / "disk", "1200k") as disk:
        ckpt = disk / "ckpt"
        result = run_cli("train", *_train_args(tiny_data.data_dir, ckpt, "--max_steps=200", "--checkpoint_every=5",
                                               "--keep_checkpoints=100")[3:], cwd=ROOT)
        assert_one_line_error(result, 1, "cannot write a checkpoint", "earlier checkpoints are intact")
        latest = RunDir(str(ckpt)).latest()
        assert latest is not None and not glob.glob(str(ckpt / "*_temp*"))  # no half-written save left behind
        model, _, _, step = checkpoints.restore_model(str(ckpt))
        assert step == RunDir(str(ckpt)).steps()[-1] > 0


# issue 27: a damaged XLA cache entry, or one that cannot be written, never fails a run.
def _damage(entry, how: str) -> None:
    content = entry.read_bytes()
    entry.write_bytes({"garbled": os.urandom(len(content)), "truncated": content[:len(content) // 3],
                       "empty": b""}[how])


def _cached_run(tiny_data, cache, ckpt, limit_file_size: int | None = None):
    """`train` in a subprocess with its XLA cache in `cache`; (the process, its result.json)."""
    def file_size_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    env = {"MNIST_DNN_XLA_CACHE": str(cache), "TF_XLA_FLAGS": "", "PYTHONPATH": str(ROOT)}
    args = _train_args(tiny_data.data_dir, ckpt, "--hidden_units=8", "--max_steps=30", "--log_every=30", "--eval_every=30",
                       f"--result_file={ckpt}.json")
    process = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300,
                             env={**os.environ, **env}, preexec_fn=file_size_limit if limit_file_size else None)
    assert process.returncode == 0, process.stderr[-3000:]
    with open(f"{ckpt}.json") as f:
        return process, json.load(f)


def _cache_files(cache) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(str(cache / "*" / "*")))


@pytest.fixture(scope="module")
def warm_xla_cache(tiny_data, tmp_path_factory):
    """A cache that holds the loop of `_cached_run`, and that run's result."""
    from mnist_dnn.lib.core import data

    data.load_splits(tiny_data)  # decoded once, so that every run traces the loop under the same name
    cache = tmp_path_factory.mktemp("warm") / "xla"
    process, result = _cached_run(tiny_data, cache, cache.parent / "ckpt")
    assert _cache_files(cache) and "warning" not in process.stderr
    return cache, result


def _cache_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "XLA's compilation cache" in line]


@pytest.mark.parametrize("how", ["garbled", "truncated", "empty"])
def test_a_damaged_xla_cache_entry_costs_one_warning_and_the_next_run_rebuilds_it(how, warm_xla_cache, tiny_data,
                                                                                   tmp_path):
    cache = tmp_path / "xla"
    shutil.copytree(warm_xla_cache[0], cache)
    entries = glob.glob(str(cache / "*" / "*.pb"))
    for entry in entries:
        _damage(pathlib.Path(entry), how)
    process, result = _cached_run(tiny_data, cache, tmp_path / "damaged")
    warnings = _cache_warnings(process.stderr)
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), process.stderr
    assert "Traceback" not in process.stderr
    assert result["step"] == 30 and result["checkpoint"].endswith("model.ckpt-30")
    assert result["validation"]["accuracy"] == pytest.approx(warm_xla_cache[1]["validation"]["accuracy"], abs=0.02)
    assert not any(os.path.exists(e) and os.path.getsize(e) == 0 for e in entries)  # the damaged entry is gone
    again, _ = _cached_run(tiny_data, cache, tmp_path / "again")
    assert _cache_warnings(again.stderr) == [] and _cache_files(cache) == _cache_files(warm_xla_cache[0])


def test_an_xla_cache_entry_that_cannot_be_written_costs_one_warning_and_leaves_no_temporary_file(tiny_data,
                                                                                                   tmp_path):
    cache = tmp_path / "xla"
    # The entry (about 0.4 MB) is past the limit, as on a disk that fills up; the checkpoints are not.
    process, result = _cached_run(tiny_data, cache, tmp_path / "limited", limit_file_size=200_000)
    assert len(_cache_warnings(process.stderr)) == 1, process.stderr
    assert result["step"] == 30 and _cache_files(cache) == []  # nothing half-written left behind


@ROOT_ONLY
def test_an_xla_cache_on_a_nearly_full_disk_is_only_read(warm_xla_cache, tiny_data, tmp_path):
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        cpu = os.listdir(warm_xla_cache[0])[0]
        stale = disk / "xla" / cpu / "xla_compile_cache__1__2__XLA_CPU_JIT.pb" f"{socket.gethostname()}-a9-999999999-6b.tmp"
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"x" * 1000)  # left by a process that is gone
        process, result = _cached_run(tiny_data, disk / "xla", tmp_path / "ckpt")
        assert result["step"] == 30 and _cache_warnings(process.stderr) == [], process.stderr
        assert _cache_files(disk / "xla") == []  # compiled, not written; the stale file removed


# issue 27: Ctrl-C while a tool starts (its imports, TensorFlow's) is one line and exit 130.
def _loaded(pid: int, library: str) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return library in f.read()


def _stderr_redirected(pid: int) -> bool:
    return "(deleted)" in os.readlink(f"/proc/{pid}/fd/2")  # the quiet start-up's temporary file


START_UP_MOMENTS = {
    "the tool's imports (numpy)": lambda pid: _loaded(pid, "_multiarray_umath"),
    "TensorFlow's import, stderr captured": _stderr_redirected,
    "TensorFlow's library loaded": lambda pid: _loaded(pid, "libtensorflow_framework"),
    "TensorFlow's Python modules": lambda pid: _loaded(pid, "_pywrap_tensorflow_internal"),
}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="watches the start-up through /proc")
@pytest.mark.parametrize("moment", START_UP_MOMENTS)
def test_ctrl_c_while_a_tool_starts_is_one_line_and_exit_130(moment, tiny_data, tmp_path):
    from mnist_dnn.cli import startup

    with open(tmp_path / "stderr", "w+") as stderr:
        process = subprocess.Popen(_train_args(tiny_data.data_dir, tmp_path / "ckpt", "--max_steps=20"),
                                   stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT)
        deadline = time.time() + 120
        while process.poll() is None and not START_UP_MOMENTS[moment](process.pid) and time.time() < deadline:
            time.sleep(0.002)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
        stderr.seek(0)
        lines = stderr.read()
    assert (process.returncode, lines) == (130, startup.INTERRUPTED + "\n")
    assert not (tmp_path / "ckpt").exists()


# issue 27: evaluate, export and inspect beside a trainer that prunes every checkpoint but the newest.
def test_the_tools_read_a_run_beside_a_trainer_that_saves_and_prunes_every_step(tiny_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    own_tmp = tmp_path / "tmp"  # the tools' temporary folders: /tmp is shared with whatever else runs on the machine
    own_tmp.mkdir()
    env = {"TMPDIR": str(own_tmp)}
    trainer = _start(_train_args(tiny_data.data_dir, ckpt, "--max_steps=100000000", "--checkpoint_every=1",
                                 "--keep_checkpoints=1"))
    try:
        _wait_for_checkpoint(trainer, ckpt)
        for attempt in range(3):
            evaluated = run_cli("evaluate", f"--ckpt_dir={ckpt}", f"--data_dir={tiny_data.data_dir}", env_extra=env,
                                cwd=ROOT)
            exported = run_cli("export", f"--ckpt_dir={ckpt}", f"--export_dir={tmp_path / f'export{attempt}'}",
                               env_extra=env, cwd=ROOT)
            inspected = run_cli("inspect_checkpoint", f"--ckpt_dir={ckpt}", env_extra=env, cwd=ROOT)
            for result in (evaluated, exported, inspected):
                assert result.returncode == 0 and "error" not in result.stderr, result.stderr[-2000:]
            assert "test" in evaluated.stdout and os.listdir(tmp_path / f"export{attempt}") == ["1"]
        assert trainer.poll() is None  # it trained throughout
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.communicate()
    assert not glob.glob(str(own_tmp / "mnist_dnn-checkpoint-*"))  # the copies are gone


# issue 27: export onto a full disk, both formats: one line, no export folder left.
@ROOT_ONLY
def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing(tiny_run, tmp_path):
    with tiny_disk(tmp_path / "disk", "8k") as disk:
        for export_format in ("saved_model", "litert"):
            result = run_cli("export", f"--ckpt_dir={tiny_run[0] / 'ckpt'}", f"--export_dir={disk / export_format}",
                             f"--format={export_format}", cwd=ROOT)
            assert_one_line_error(result, 1, f"cannot write the export {disk / export_format}/1: No space left on device")
            assert os.listdir(disk) == []


# issue 37 (item 2): what is not a small regular file, given where a file is read, is one line with memory bounded.
# predict read /dev/zero until the kernel killed it at 22.7 GB, blocked on a FIFO, and crashed on a 3 GB sparse .png.
ADDRESS_SPACE = 4 << 30  # the tools need about 1.9 GB of address space (TensorFlow's libraries, its threads' stacks)


def _hostile_input(kind: str, tmp_path) -> tuple[str, str]:
    """(path, what the error line says of it) for an input of that kind, made in tmp_path (/dev/zero is read only)."""
    path = tmp_path / "input.png"
    if kind == "/dev/zero":
        return "/dev/zero", "/dev/zero: is a character device, not a regular file"
    if kind == "a device node":
        if os.geteuid() != 0:
            pytest.skip("making a device node (mknod) needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's numbers
        return str(path), f"{path}: is a character device, not a regular file"
    if kind == "a FIFO":
        os.mkfifo(path)
        return str(path), f"{path}: is a FIFO, not a regular file"
    if kind == "a 3 GB sparse file":
        with open(path, "wb") as f:
            f.truncate(3 * 2**30)
        return str(path), f"{path}: is 3,221,225,472 bytes, over the cap of 134,217,728"
    path.write_bytes(tf.io.encode_jpeg(np.full((28, 28, 1), 7, np.uint8)).numpy()[:60])  # libjpeg complains on fd 2
    return str(path), f"{path}: not an image TensorFlow can decode"


def _limited(args: list[str]) -> subprocess.CompletedProcess:
    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=180, preexec_fn=limit_memory)


@pytest.mark.parametrize("kind", ["/dev/zero", "a device node", "a FIFO", "a 3 GB sparse file", "a truncated JPEG"])
def test_predict_on_what_is_no_image_file_is_one_line_with_memory_bounded(kind, tmp_path):
    path, says = _hostile_input(kind, tmp_path)
    request = tmp_path / "request.json"
    result = _limited([sys.executable, "-m", "mnist_dnn.predict", f"--rest_request={request}", path])
    assert_one_line_error(result, 1, says)
    assert result.stderr.count("\n") == 1 and not request.exists(), result.stderr  # nothing else on stderr


@pytest.mark.parametrize("kind", ["/dev/zero", "a FIFO", "a 3 GB sparse file"])
def test_a_flagfile_that_is_no_small_regular_file_is_one_line_with_memory_bounded(kind, tiny_data, tmp_path):
    path, says = _hostile_input(kind, tmp_path)
    result = _limited(_train_args(tiny_data.data_dir, tmp_path / "ckpt", f"--flagfile={path}"))
    assert_one_line_error(result, 2, "--flagfile " + says.replace("134,217,728", "1,048,576"))
    assert not (tmp_path / "ckpt").exists()


# issue 37 (item 5): a disk that fills up, whichever write meets it first. One line naming the folder and "no space
# left"; the last good checkpoint restores; nothing half-written is left where a later run would read it as whole.
def _fill(disk: pathlib.Path) -> pathlib.Path:
    """Fills `disk` to its last byte with one file; returns it (removing it frees the space)."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(descriptor, b"\0" * 65536):
            pass
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(descriptor)
    return filler


def _full_disk_args(data_dir, ckpt, *extra) -> list[str]:
    return [sys.executable, "-m", "mnist_dnn.train", f"--data_dir={data_dir}", f"--ckpt_dir={ckpt}", "--hidden_units=32",
            "--batch_size=64", "--max_steps=200", "--checkpoint_every=20", "--eval_every=20", "--log_every=20",
            "--keep_checkpoints=2", *extra]


def _assert_nothing_half_written(folder: pathlib.Path) -> None:
    """No temporary file or folder of a save, and every JSON file, checkpoint and export version below `folder` reads whole."""
    leftovers = [p for p in folder.rglob("*") if "_temp" in p.name or ".tmp-" in p.name or p.name.endswith(".tmp")]
    assert leftovers == []
    for path in folder.rglob("*.json"):
        json.loads(path.read_text())
    for run in {p.parent for p in folder.rglob("model_config.json")}:
        for step in RunDir(str(run)).steps():  # each checkpoint the run would resume from
            _, _, restored, _ = checkpoints.restore_model(str(run), RunDir(str(run)).checkpoint_path(step))
            assert restored.endswith(f"model.ckpt-{step}")
        if RunDir(str(run / "best")).steps():
            checkpoints.restore_model(str(run), which="best")
    for version in folder.rglob("saved_model.pb"):
        tf.saved_model.load(str(version.parent))


FILL_POINTS = {  # where the disk fills -> (tmpfs size, the flags that write onto it, filled first?, what the line says)
    "the summary writers": ("4k", ("log_dir",), False, "no space left on device in {disk}/logs"),
    "the first checkpoint": ("300k", ("ckpt_dir",), False, "cannot write a checkpoint to {disk}/ckpt"),
    # the result file of the error is lost too: the line still names the checkpoint
    "a later checkpoint": ("700k", ("ckpt_dir", "result_file"), False, "cannot write a checkpoint to {disk}/ckpt"),
    "the export at the end": ("1m", ("export_dir",), True, "cannot write the export {disk}/export/1"),
    "the result file": ("1m", ("result_file",), True, "no space left on device in {disk} (writing result.json)"),
}


@ROOT_ONLY
@pytest.mark.parametrize("where", FILL_POINTS)
def test_training_onto_a_disk_that_fills_is_one_line_and_resumes_from_the_last_good_checkpoint(where, tiny_data,
                                                                                                tmp_path):
    size, on_disk, filled_first, says = FILL_POINTS[where]
    with tiny_disk(tmp_path / "disk", size) as disk:
        folders = {flag: (disk if flag in on_disk else tmp_path) / name
                   for flag, name in (("ckpt_dir", "ckpt"), ("log_dir", "logs"), ("export_dir", "export"),
                                      ("result_file", "result.json"))}
        args = _full_disk_args(tiny_data.data_dir, folders["ckpt_dir"], f"--export_dir={folders['export_dir']}",
                               f"--result_file={folders['result_file']}", f"--log_dir={folders['log_dir']}")
        filler = _fill(disk) if filled_first else None
        result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert_one_line_error(result, 1)
        error = result.stderr.splitlines()[-1]
        assert says.format(disk=disk) in error and "no space left on device" in error.lower(), error
        assert "{{function_node" not in error and "[Op:" not in error  # TensorFlow's decorations of the op
        _assert_nothing_half_written(disk)
        _assert_nothing_half_written(tmp_path)
        steps = RunDir(str(folders["ckpt_dir"])).steps()
        assert steps or where in ("the summary writers", "the first checkpoint")  # a good checkpoint to resume from
        if filler:
            filler.unlink()
        else:
            subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        if where == "the export at the end":  # the run finished: its last checkpoint exports
            assert steps[-1] == 200 and not folders["export_dir"].exists()
            exported = run_cli("export", f"--ckpt_dir={folders['ckpt_dir']}", f"--export_dir={folders['export_dir']}")
            assert exported.returncode == 0 and (folders["export_dir"] / "1" / "saved_model.pb").exists()
            return
        again = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        resumed = json.loads(folders["result_file"].read_text())
        assert resumed["start_step"] == (steps[-1] if steps else 0) and resumed["step"] == 200
        _assert_nothing_half_written(disk)
        print(where, error, "resumed from step", resumed["start_step"])


@ROOT_ONLY
def test_a_report_onto_a_disk_that_fills_is_one_line_and_leaves_each_report_file_whole_or_absent(tiny_data, tmp_path):
    root = tmp_path / "sweep"
    swept = run_cli("sweep", f"--root={root}", "--grid=learning_rate=0.01", f"--data_dir={tiny_data.data_dir}",
                    "--hidden_units=8", "--max_steps=20", "--eval_every=10", "--log_every=10", "--checkpoint_every=10",
                    cwd=ROOT)
    assert swept.returncode == 0, swept.stderr[-2000:]
    written = {name: (root / name).read_bytes() for name in ("report.csv", "report.md")}
    with tiny_disk(tmp_path / "disk", "2m") as disk:
        shutil.copytree(root, disk / "sweep", ignore=shutil.ignore_patterns("report.*"))
        filler = _fill(disk)
        os.truncate(filler, filler.stat().st_size - 16384)  # room for the table and the text, not the picture
        report = run_cli("report", f"--root={disk / 'sweep'}", f"--data_dir={tiny_data.data_dir}", cwd=ROOT)
        assert_one_line_error(report, 1, f"no space left on device in {disk / 'sweep'} (writing report.png)")
        _assert_nothing_half_written(disk)
        assert {name: (disk / "sweep" / name).read_bytes() for name in written} == written
        assert not (disk / "sweep" / "report.png").exists()
        filler.unlink()
        again = run_cli("report", f"--root={disk / 'sweep'}", f"--data_dir={tiny_data.data_dir}", cwd=ROOT)
        assert again.returncode == 0, again.stderr[-2000:]
        assert tf.io.decode_png((disk / "sweep" / "report.png").read_bytes()).shape[-1] in (3, 4)  # whole


@ROOT_ONLY
def test_an_xla_cache_whose_disk_fills_during_the_run_costs_one_warning_and_leaves_no_entry_half_written(
        warm_xla_cache, tiny_data, tmp_path):
    # Over xla_cache.MIN_FREE_BYTES free when the run starts (so written), full by the time XLA writes its entry.
    with tiny_disk(tmp_path / "disk", "66m") as disk:
        env = {**os.environ, "MNIST_DNN_XLA_CACHE": str(disk / "xla"), "TF_XLA_FLAGS": "", "PYTHONPATH": str(ROOT)}
        args = _train_args(tiny_data.data_dir, tmp_path / "ckpt", "--hidden_units=8", "--max_steps=30",
                           "--log_every=30", "--eval_every=30", f"--result_file={tmp_path}/result.json")
        with open(tmp_path / "stderr", "w+") as stderr:
            process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, cwd=ROOT, env=env)
            deadline = time.time() + 120
            while process.poll() is None and not _loaded(process.pid, "libtensorflow_framework") and time.time() < deadline:
                time.sleep(0.01)
            assert process.poll() is None  # TensorFlow loads: the cache was set up (read-write: over 64 MB were free)
            filler = _fill(disk)
            assert process.wait(timeout=300) == 0
            stderr.seek(0)
            lines = stderr.read()
        warnings = _cache_warnings(lines)
        assert len(warnings) == 1 and "no space left on device" in warnings[0] and str(disk / "xla") in warnings[0], lines
        assert json.loads((tmp_path / "result.json").read_text())["step"] == 30
        assert _cache_files(disk / "xla") == []  # no entry, no temporary file
        filler.unlink()
        again, _ = _cached_run(tiny_data, disk / "xla", tmp_path / "again")
        assert _cache_warnings(again.stderr) == [] and _cache_files(disk / "xla") == _cache_files(warm_xla_cache[0])
