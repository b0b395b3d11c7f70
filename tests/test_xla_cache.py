"""XLA's persistent cache kept within its cap, least recently used first, and shared safely by processes.

Sizes are summed from os.stat here and the order of use is the test's own: entries are dated with
os.utime and read by other processes, never through the module's own bookkeeping.
"""

import hashlib
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT
from mnist_dnn.cli import startup
from mnist_dnn.lib import xla_cache

NOW = time.time()


def _entry(folder: pathlib.Path, number: int, size: int, age_s: float) -> pathlib.Path:
    """An entry named as XLA names one, of `size` bytes, last written `age_s` seconds ago."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"xla_compile_cache__{number}__{number * 7}__XLA_CPU_JIT.pb"
    path.write_bytes(os.urandom(size))
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def _read_elsewhere(*paths) -> None:
    """Reads the files in another process, as XLA in another tool would."""
    subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)


def _sizes(paths) -> dict[pathlib.Path, int]:
    return {path: os.stat(path).st_size for path in paths}


def _kept_newest_first(order_of_use: list[pathlib.Path], sizes: dict, cap: int) -> set[pathlib.Path]:
    """The entries an LRU cache of `cap` bytes keeps: the most recently used ones, as many as fit."""
    kept, total = set(), 0
    for path in reversed(order_of_use):
        total += sizes[path]
        if total > cap:
            break
        kept.add(path)
    return kept


def _entries(root: pathlib.Path) -> set[pathlib.Path]:
    return set(root.glob("*/*.pb"))


def test_the_least_recently_used_entries_of_every_folder_go_first_until_the_root_is_within_its_cap(tmp_path):
    root = tmp_path / "xla"
    this, older_tensorflow = root / "x86_64-0123456789ab-tf2.21.0", root / "x86_64-0123456789ab-tf2.20.0"
    sizes = [7_000, 3_000, 12_000, 5_000, 9_000, 4_000, 8_000, 6_000, 2_000, 11_000]
    # Used in this order (the oldest first), alternating between the folders.
    order = [_entry(this if i % 2 else older_tensorflow, i, size, age_s=1000 - 10 * i) for i, size in enumerate(sizes)]
    ours = this / f"{order[1].name}{socket.gethostname()}-7f-{os.getpid()}-5e.tmp"  # being written: no entry yet
    ours.write_bytes(os.urandom(50_000))
    other = this / "notes.txt"
    other.write_bytes(os.urandom(50_000))
    cap, sizes = 40_000, _sizes(order)
    removed = xla_cache.evict(str(root), cap)
    expected = _kept_newest_first(order, sizes, cap)
    assert _entries(root) == expected and len(expected) == 6  # 11,000 + 2,000 + 6,000 + 8,000 + 4,000 + 9,000: the cap
    assert sorted(map(pathlib.Path, removed)) == sorted(set(order) - expected)
    assert sum(os.stat(p).st_size for p in _entries(root)) <= cap
    assert ours.exists() and other.exists()  # never counted nor removed
    assert xla_cache.evict(str(root), cap) == []  # within the cap: nothing more



def test_entries_that_cannot_be_stamped_or_removed_stay_and_fail_nothing(tmp_path, monkeypatch):
    """Another user's entries in a shared cache (the tests run as root: permissions are not refused here)."""
    order = [_entry(tmp_path / "xla" / "k", i, 10_000, age_s=100 - i) for i in range(3)]

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "utime", refused)
    monkeypatch.setattr(os, "remove", refused)
    assert xla_cache.evict(str(tmp_path / "xla"), 0, [str(order[0])]) == []
    assert _entries(tmp_path / "xla") == set(order)

def test_an_entry_read_by_any_process_counts_as_used_whatever_the_access_times_say(tmp_path):
    folder = tmp_path / "xla" / "k"
    order = [_entry(folder, i, 10_000, age_s=1000 - 10 * i) for i in range(8)]
    used = xla_cache.watch(str(folder))
    _read_elsewhere(order[1], order[4])
    (folder / f"{order[0].name}host-1-2-3.tmp").write_bytes(b"x")  # opened too, but not an entry
    for path in order:
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns))  # as a noatime disk would say: never read
    seen, sizes = used(), _sizes(order)
    assert sorted(seen) == sorted(map(str, [order[1], order[4]]))
    xla_cache.evict(str(tmp_path / "xla"), 40_000, seen)
    assert _entries(tmp_path / "xla") == _kept_newest_first([*order[:1], *order[2:4], *order[5:], order[1], order[4]],
                                                             sizes, 40_000) == {order[1], order[4], order[7], order[6]}
    assert used() == []  # each use is reported once
    assert xla_cache.watch(str(tmp_path / "not there yet"))() == []


def test_the_cap_is_512_mib_unless_mnist_dnn_xla_cache_mb_says_otherwise(capsys):
    assert startup.xla_cache_cap({}) == 512 * 2 ** 20
    assert startup.xla_cache_cap({startup.XLA_CACHE_MB_ENV: " 64 "}) == 64 * 2 ** 20
    assert startup.xla_cache_cap({startup.XLA_CACHE_MB_ENV: "0"}) == 0  # keeps nothing past a run
    assert capsys.readouterr().err == ""
    for wrong in ("lots", "-5", "1.5", "1e3"):
        assert startup.xla_cache_cap({startup.XLA_CACHE_MB_ENV: wrong}) == 512 * 2 ** 20
        assert capsys.readouterr().err == (f"warning: {startup.XLA_CACHE_MB_ENV}={wrong} is not a whole number of MB; "
                                           "the XLA cache keeps 512 MB\n")


def test_a_tool_evicts_when_it_starts_and_when_it_ends_keeping_what_it_used(tmp_path):
    """A process that starts as the tools do, reads two old entries (as XLA would) and writes a new one."""
    root = tmp_path / "xla"
    folder = root / startup.cache_key()
    stale = _entry(root / "x86_64-0123456789ab-tf2.19.0", 99, 300_000, age_s=5000)  # another version's, unused
    order = [_entry(folder, i, 300_000, age_s=1000 - 10 * i) for i in range(6)]
    program = textwrap.dedent(f"""
        import os, sys
        from mnist_dnn.cli import startup
        startup.use_xla_cache()
        print(sorted(os.listdir({str(folder)!r})), flush=True)  # after the eviction at the start
        for name in sys.argv[1:]:
            open(os.path.join({str(folder)!r}, name), "rb").read()
        with open(os.path.join({str(folder)!r}, "xla_compile_cache__7__7__XLA_CPU_JIT.pb"), "wb") as f:
            f.write(os.urandom(300_000))
    """)
    env = {**os.environ, startup.XLA_CACHE_ENV: str(root), startup.XLA_CACHE_MB_ENV: "1", "TF_XLA_FLAGS": "",
           "PYTHONPATH": str(ROOT)}
    sizes = _sizes([stale, *order])
    process = subprocess.run([sys.executable, "-c", program, order[3].name, order[4].name], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
    assert process.returncode == 0 and process.stderr == "", process.stderr
    at_start = _kept_newest_first([stale, *order], sizes, 2 ** 20)
    assert process.stdout.strip() == str(sorted(p.name for p in at_start)) and not stale.exists()
    new = folder / "xla_compile_cache__7__7__XLA_CPU_JIT.pb"
    # order[5], written last before the run but not used in it, goes; order[3] and order[4], read by it, stay.
    sizes[new] = os.stat(new).st_size
    kept = _kept_newest_first([order[5], new, order[3], order[4]], sizes, 2 ** 20)
    assert _entries(root) == kept == {new, order[3], order[4]}



def test_an_entry_evicted_between_xlas_check_and_its_read_costs_one_warning(tmp_path):
    import tensorflow as tf

    gone = tmp_path / "xla_compile_cache__1__2__XLA_CPU_JIT.pb"
    with pytest.raises(tf.errors.NotFoundError) as raised:  # TensorFlow's own file system, as XLA reads entries
        tf.io.gfile.GFile(str(gone), "rb").read()
    warning = xla_cache.recover(raised.value, f"--tf_xla_persistent_cache_directory={tmp_path}")
    assert warning.startswith(f"XLA's compilation cache {tmp_path} failed (NotFoundError); removed 0 ")

# Two processes share a cache whose cap holds a few entries: each writes entries as XLA does (a temporary file
# renamed into place; the two write under the same names), reads them, and evicts, a few hundred times.
_SHARER = textwrap.dedent("""
    import glob, hashlib, json, os, random, socket, sys, threading, time
    from mnist_dnn.lib import xla_cache

    folder, cap, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    random.seed(os.getpid())
    used, counts, problems = xla_cache.watch(folder), dict(written=0, read=0, missing=0, evicted=0), []
    open(f"{go}.{os.getpid()}", "w").close()  # ready
    while not os.path.exists(go):
        time.sleep(0.001)
    began, step = time.time(), 0
    open(f"{go}-began.{os.getpid()}", "w").close()
    while step < 400 or len(glob.glob(f"{go}-began.*")) < 2:  # until both have begun: they overlap
        step += 1
        name = os.path.join(folder, f"xla_compile_cache__{random.randrange(12)}__1__XLA_CPU_JIT.pb")
        if step % 3 == 0:
            payload = os.urandom(random.randrange(1_000, 20_000))
            temporary = f"{name}{socket.gethostname()}-{threading.get_ident():x}-{os.getpid()}-{time.time_ns():x}.tmp"
            with open(temporary, "wb") as f:
                f.write(hashlib.sha256(payload).digest())
                for start in range(0, len(payload), 4096):  # slowly, as a large entry is written
                    f.write(payload[start:start + 4096])
                    f.flush()
                    time.sleep(0.0005)
            try:
                os.rename(temporary, name)
                counts["written"] += 1
            except OSError as e:
                problems.append(f"writing {name}: {e!r}")
        elif step % 3 == 1:
            try:
                with open(name, "rb") as f:
                    content = f.read()
            except FileNotFoundError:
                counts["missing"] += 1
                continue
            counts["read"] += 1
            if hashlib.sha256(content[32:]).digest() != content[:32]:
                problems.append(f"{name} read with {len(content)} bytes, not whole")
        else:
            counts["evicted"] += len(xla_cache.evict(os.path.dirname(folder), cap, used()))
    print(json.dumps(dict(counts=counts, problems=problems, began=began, ended=time.time())))
""")


def test_two_processes_writing_reading_and_evicting_one_cache_never_see_a_partial_entry(tmp_path):
    folder, cap, go = tmp_path / "xla" / "k", 60_000, tmp_path / "go"
    folder.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sharers = [subprocess.Popen([sys.executable, "-c", _SHARER, str(folder), str(cap), str(go)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.time() + 60
    while len(list(tmp_path.glob("go.*"))) < 2 and time.time() < deadline:  # both ready: they begin together
        time.sleep(0.01)
    go.touch()
    reports = []
    for sharer in sharers:
        out, err = sharer.communicate(timeout=120)
        assert sharer.returncode == 0, err
        reports.append(json.loads(out))
    assert [r["problems"] for r in reports] == [[], []]
    assert max(r["began"] for r in reports) < min(r["ended"] for r in reports)  # at the same time
    for report in reports:  # each did all four, many times
        assert min(report["counts"].values()) >= 10, report["counts"]
    assert sorted(os.listdir(folder)) == sorted(p.name for p in folder.glob("*.pb"))  # no temporary file left
    xla_cache.evict(str(tmp_path / "xla"), cap)
    assert sum(os.stat(p).st_size for p in folder.glob("*.pb")) <= cap
    for entry in folder.glob("*.pb"):
        content = entry.read_bytes()
        assert hashlib.sha256(content[32:]).digest() == content[:32], entry



def _train(tiny_data, root, ckpt, hidden: int, cap_mb: str) -> subprocess.Popen:
    env = {**os.environ, startup.XLA_CACHE_ENV: str(root), startup.XLA_CACHE_MB_ENV: cap_mb, "TF_XLA_FLAGS": "",
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "mnist_dnn.train", f"--data_dir={tiny_data.data_dir}",
                             f"--ckpt_dir={ckpt}", f"--log_dir={ckpt}-logs", f"--hidden_units={hidden}",
                             "--max_steps=30", "--log_every=30", "--eval_every=30"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_trainings_sharing_a_full_cache_keep_the_entry_xla_loaded_and_the_one_it_wrote(tiny_data, tmp_path):
    """Real XLA: one run loads its entry, the other writes one, at once, in a cache that is then over its cap."""
    from mnist_dnn.lib.core import data

    data.load_splits(tiny_data)  # decoded once, so that every run traces the loop under the same name
    root, cap = tmp_path / "xla", 2 ** 20
    first = _train(tiny_data, root, tmp_path / "a0", 8, "1")
    assert first.wait(timeout=300) == 0 and first.stderr.read() == ""
    loaded = _entries(root)
    assert loaded and sum(_sizes(loaded).values()) < cap / 2
    for path in loaded:  # the oldest of the cache, as if unused for a day
        os.utime(path, (NOW - 86_400, NOW - 86_400))
    filler = _entry(root / startup.cache_key(), 1, cap - sum(_sizes(loaded).values()), age_s=3600)  # just fits
    runs = [_train(tiny_data, root, tmp_path / "a1", 8, "1"), _train(tiny_data, root, tmp_path / "b1", 16, "1")]
    for run in runs:
        assert run.wait(timeout=300) == 0
        assert run.stderr.read() == ""  # no cache warning: every entry XLA read was whole
    written = _entries(root) - loaded - {filler}
    assert written and not filler.exists()  # the least recently used: the entry XLA loaded counts as used
    assert _entries(root) == loaded | written and sum(_sizes(_entries(root)).values()) <= cap
    again = [_train(tiny_data, root, tmp_path / "a2", 8, "1"), _train(tiny_data, root, tmp_path / "b2", 16, "1")]
    for run in again:
        assert run.wait(timeout=300) == 0 and run.stderr.read() == ""
    assert _entries(root) == loaded | written  # both loaded whole: nothing compiled anew
