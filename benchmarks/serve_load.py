"""Load on `mnist_dnn.serve` over loopback, against calling the SavedModel in process; and a rollout under load.

    flock /tmp/mnist_bench.lock python benchmarks/serve_load.py [--parts=steady,rollout] [--model_dir=exports/mnist] \
        [--idx_dir=../shared/data/mnist] [--clients=20] [--requests=200] [--out=benchmarks/serve_load.json]

Without --model_dir, the default model (784-60-30-10 dense, random weights: the time does not
depend on them) is exported to a temporary folder. The server runs as `python -m mnist_dnn.serve`
in its own process; the clients run in this one (asyncio, one keep-alive connection per client),
each sending --requests `serving_default` predict requests one after another, all --clients at
once, first with one image per request, then with 100. Reported: requests/s and images/s over
the wall time, latency p50 and p99, and errors (a status other than 200, or no answer).

In process, for comparison: the same SavedModel loaded with tf.saved_model.load and its
`serving_default` called with the same batches as uint8 tensors, by one caller and by
--clients threads, the same number of calls in all. The rows take turns, --rounds times.

The rollout (--parts=rollout): --rollout_clients clients (half of them sending 1 image a request, half
100) load a server on a folder holding version 1 for --phase_seconds ("before"); then, "during":
version 2 is exported by another process (`exporting.export_model`, as `export` writes it), version
1 is deleted once 2 answers, a version 3 appears half written (its variables file cut in half, its
saved_model.pb written last, as a copy under way), stays so --hold_seconds (at least twice the time
from its appearance to its listing as failed, so that a retry would show), and is then completed;
"after" starts when 3 answers and lasts --phase_seconds. Every answer is checked against the
version that the server names in its X-Model-Version header: the classes and probabilities the
Keras model of that version (seeds 1, 2, 3, random weights) computes in this process for the same
images. Reported per phase and request size: requests/s, images/s, p50 and p99 (requests counted
in the phase they started in), and the checks; any failed check fails the benchmark (exit 1).
"""

import asyncio
import concurrent.futures
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import harness

BATCHES = (1, 100)


def images(args, count: int = 1000) -> np.ndarray:
    """MNIST test images (uint8 [N, 28, 28, 1]) if --idx_dir is given, else random pixels."""
    if args.idx_dir:
        from mnist_dnn.lib.core import data
        test = data.load_splits(data.DataConfig("mnist", args.data_dir, args.idx_dir))["test"]
        return test.images.numpy()[:count].reshape(-1, 28, 28, 1)
    return np.random.default_rng(0).integers(0, 256, (count, 28, 28, 1)).astype(np.uint8)


def summary(latencies: list[float], wall: float, batch: int, errors: int) -> dict:
    ms = np.array(latencies) * 1000
    percentile = (lambda q: round(float(np.percentile(ms, q)), 3)) if len(ms) else (lambda q: None)  # none answered
    return {"requests": len(latencies) + errors, "errors": errors, "wall_s": round(wall, 3),
            "requests_per_s": round(len(latencies) / wall, 1), "images_per_s": round(batch * len(latencies) / wall, 1),
            "p50_ms": percentile(50), "p99_ms": percentile(99)}


async def one_client(url: str, bodies: list[bytes], latencies: list, errors: list) -> None:
    import httpx
    async with httpx.AsyncClient(timeout=60) as client:
        for body in bodies:
            started = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers={"Content-Type": "application/json"})
                ok = response.status_code == 200 and "predictions" in response.json()
            except httpx.HTTPError:
                ok = False
            (latencies if ok else errors).append(time.perf_counter() - started)


async def load(url: str, pixels: np.ndarray, batch: int, clients: int, requests: int) -> dict:
    def body(i):
        start = (i * batch) % (len(pixels) - batch + 1)
        return json.dumps({"instances": pixels[start:start + batch].tolist()}, separators=(",", ":")).encode()

    bodies = [body(i) for i in range(requests)]
    await one_client(url, bodies[:5], [], [])  # warm-up: the first calls trace nothing, but connect
    latencies, errors = [], []
    started = time.perf_counter()
    await asyncio.gather(*(one_client(url, bodies, latencies, errors) for _ in range(clients)))
    return summary(latencies, time.perf_counter() - started, batch, len(errors))


def in_process_rows(signature, pixels: np.ndarray, batch: int, clients: int, requests: int) -> dict:
    """One caller, and `clients` threads, calling the SavedModel's signature with batches of `batch` images."""
    import tensorflow as tf
    batches = [tf.constant(pixels[(i * batch) % (len(pixels) - batch + 1):][:batch]) for i in range(requests)]

    def caller(calls):
        times = []
        for tensor in calls:
            started = time.perf_counter()
            signature(images=tensor)["classes"].numpy()
            times.append(time.perf_counter() - started)
        return times

    def one_caller():
        started = time.perf_counter()
        times = caller(batches * clients)
        return summary(times, time.perf_counter() - started, batch, 0)

    def threads():
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            started = time.perf_counter()
            times = [t for ts in pool.map(caller, [batches] * clients) for t in ts]
            return summary(times, time.perf_counter() - started, batch, 0)

    caller(batches[:20])  # warm-up
    return {f"in_process_one_caller_batch_{batch}": one_caller, f"in_process_{clients}_threads_batch_{batch}": threads}


def start_server(model_dir: str, threads: int, poll_seconds: float = 1) -> tuple[subprocess.Popen, str, list]:
    """The server on a free port: its process, its predict URL, and the lines it prints after the first (growing)."""
    process = harness.start([sys.executable, "-m", "mnist_dnn.serve", f"--model_dir={model_dir}", "--port=0",
                             f"--model_threads={threads}", f"--file_system_poll_wait_seconds={poll_seconds}"])
    line = process.stdout.readline()
    if not line.startswith("Serving"):
        process.kill()
        raise SystemExit(f"error: the server did not start: {line}")
    said = []
    threading.Thread(target=lambda: said.extend(line.rstrip("\n") for line in process.stdout), daemon=True).start()
    return process, line.split(" at ")[1].split()[0] + "v1/models/mnist:predict", said


# --- The rollout ---------------------------------------------------------------------------------

SEEDS = {1: 1, 2: 2, 3: 3}  # version: the seed of its model's random weights
EXPORT_VERSION = ("import sys\nfrom mnist_dnn.lib.core import exporting, models\n"
                  "exporting.export_model(models.create_model(models.make_config('dense'), seed=int(sys.argv[2])), "
                  "sys.argv[1], version=int(sys.argv[3]))")


def keras_probabilities(pixels: np.ndarray) -> dict[int, np.ndarray]:
    """Each version's probabilities for every image, computed by its Keras model in this process."""
    import tensorflow as tf
    from mnist_dnn.lib.core import data, models
    return {version: tf.nn.softmax(models.create_model(models.make_config("dense"), seed=seed)(
        data.to_float(pixels.reshape(-1, data.NUM_PIXELS)), training=False)).numpy() for version, seed in SEEDS.items()}


class Failed(Exception):
    """A request the server did not answer with status 200."""


class Wrong(Exception):
    """An answer that is not the one of the version the server named."""


class Rollout:
    """The clients' answers, checked as they come, and the moments of the rollout (seconds from the start)."""

    def __init__(self, url: str, pixels: np.ndarray, expected: dict[int, np.ndarray], pause: float = 0):
        self.url, self.pixels, self.expected, self.pause = url, pixels, expected, pause
        self.status_url = url.rsplit(":", 1)[0]
        self.started = time.perf_counter()
        self.events, self.answers, self.problems = {}, [], []  # answers: (start, seconds, batch, version or None)
        self.stop = asyncio.Event()

    def now(self) -> float:
        return time.perf_counter() - self.started

    def mark(self, event: str) -> None:
        self.events[event] = round(self.now(), 3)
        print(f"{self.events[event]:8.2f} s  {event}", flush=True)

    def check(self, response, first: int, batch: int) -> int:
        """The version that answered, if its answer is that version's model's; raises Wrong otherwise."""
        if response.status_code != 200:
            raise Failed(f"status {response.status_code}: {response.text[:200]}")
        version = int(response.headers["X-Model-Version"])
        predictions = response.json()["predictions"]
        expected = self.expected[version][first:first + batch]
        got = np.array([p["probabilities"] for p in predictions])
        if got.shape != expected.shape or not np.allclose(got, expected, rtol=0, atol=1e-5) or \
                [p["classes"] for p in predictions] != expected.argmax(axis=1).tolist():
            raise Wrong(f"version {version} answered, but not with that version's probabilities")
        return version

    def bodies(self, index: int, batch: int) -> list[tuple[int, bytes]]:
        """Client `index`'s requests, sent in turn: (its first image, the body); made before the clock starts."""
        firsts = [(index * 61 + k * batch) % (len(self.pixels) - batch + 1) for k in range(10)]
        return [(first, json.dumps({"instances": self.pixels[first:first + batch].tolist()}).encode()) for first in firsts]

    async def client(self, index: int, batch: int, bodies: list[tuple[int, bytes]]) -> None:
        import httpx
        async with httpx.AsyncClient(timeout=120) as http:
            for first, body in itertools.cycle(bodies):
                if self.stop.is_set():
                    return
                started = self.now()
                try:
                    version = self.check(await http.post(self.url, content=body,
                                                         headers={"Content-Type": "application/json"}), first, batch)
                except (httpx.HTTPError, Failed, Wrong, ValueError, KeyError) as e:  # ValueError: JSON; KeyError: header
                    version = None
                    self.problems.append({"client": index, "at_s": round(started, 3), "batch": batch,
                                          "kind": "wrong" if isinstance(e, Wrong) else "failed",
                                          "problem": f"{type(e).__name__}: {e}"[:300]})
                self.answers.append((started, self.now() - started, batch, version, index))
                await asyncio.sleep(self.pause)

    async def status(self, http) -> list[dict]:
        return (await http.get(self.status_url)).json()["model_version_status"]

    async def until(self, http, wanted, what: str, timeout: float = 300) -> list[dict]:
        """Polls the status every 50 ms until `wanted(status)`; the status then."""
        deadline = time.perf_counter() + timeout
        while not wanted(status := await self.status(http)):
            if time.perf_counter() > deadline:
                raise harness.Failed(f"error: {what} did not happen within {timeout} s; status: {status}")
            await asyncio.sleep(0.05)
        self.mark(what)
        return status


def state(status: list[dict]) -> dict[str, str]:
    return {s["version"]: s["state"] for s in status}


def write_half(spare: str, target: str) -> None:
    """Version 3 as a copy under way: its variables file half written, saved_model.pb (what makes it a version) last."""
    shutil.copytree(spare, target, ignore=shutil.ignore_patterns("saved_model.pb"))
    data_file = next(os.path.join(target, "variables", name) for name in os.listdir(os.path.join(target, "variables"))
                     if ".data-" in name)
    os.truncate(data_file, os.path.getsize(data_file) // 2)
    shutil.copy(os.path.join(spare, "saved_model.pb"), target)


async def drive(rollout: Rollout, model_dir: str, spare: str, args) -> dict:
    """The rollout's steps, while the clients run; what the status said while version 3 was half written."""
    import httpx
    async with httpx.AsyncClient(timeout=60) as http:
        await asyncio.sleep(args.phase_seconds)
        rollout.mark("export of version 2 started")
        export = await asyncio.to_thread(harness.call, [sys.executable, "-c", EXPORT_VERSION, model_dir,
                                                        str(SEEDS[2]), "2"])
        if export.returncode:
            raise harness.Failed(f"error: the export of version 2 failed: {export.stderr[-2000:]}")
        rollout.mark("export of version 2 done")
        await rollout.until(http, lambda s: state(s).get("2") == "AVAILABLE", "version 2 served")
        await asyncio.to_thread(shutil.rmtree, os.path.join(model_dir, "1"))
        rollout.mark("version 1 deleted")
        await asyncio.to_thread(write_half, spare, os.path.join(model_dir, "3"))
        rollout.mark("version 3 written half")
        failed = await rollout.until(http, lambda s: state(s).get("3") == "END", "version 3 failed")
        # Long enough for a retry to show (said again) if the server made one: twice what the first try took.
        events = rollout.events
        await asyncio.sleep(max(args.hold_seconds, 2 * (events["version 3 failed"] - events["version 3 written half"])))
        held = await rollout.status(http)
        whole = os.path.join(spare, "variables")
        for name in os.listdir(whole):
            await asyncio.to_thread(shutil.copy, os.path.join(whole, name), os.path.join(model_dir, "3", "variables"))
        rollout.mark("version 3 completed")
        await rollout.until(http, lambda s: state(s).get("3") == "AVAILABLE", "version 3 served")
        await asyncio.sleep(args.phase_seconds)
        rollout.mark("end")
        rollout.stop.set()
    return {"status_when_3_failed": failed, "status_after_hold": held}


def phase_rows(rollout: Rollout) -> dict:
    """Per phase and request size: requests/s, images/s, p50, p99 and errors; and the versions that answered."""
    bounds = {"before": (0, rollout.events["export of version 2 started"]),
              "during": (rollout.events["export of version 2 started"], rollout.events["version 3 served"]),
              "after": (rollout.events["version 3 served"], rollout.events["end"])}
    rows = {}
    for phase, (start, end) in bounds.items():
        answers = [a for a in rollout.answers if start <= a[0] < end]
        rows[phase] = {"seconds": round(end - start, 3),
                       "versions": {str(v): sum(a[3] == v for a in answers) for v in sorted({a[3] for a in answers} - {None})}}
        for batch in BATCHES:
            mine = [a for a in answers if a[2] == batch]
            if mine:
                rows[phase][f"batch_{batch}"] = summary([a[1] for a in mine if a[3] is not None], end - start, batch,
                                                        sum(a[3] is None for a in mine))
    return rows


def checks(rollout: Rollout, seen: dict, said: list[str]) -> dict:
    """What must hold for the rollout to count, each with what was found."""
    by_client = {}
    for start, _, _, version, client in sorted(rollout.answers):
        if version is not None:
            by_client.setdefault(client, []).append(version)
    completed = rollout.events["version 3 completed"]
    answered, before_end = [a for a in rollout.answers if a[3] is not None], rollout.events["export of version 2 started"]
    failure_lines = [line for line in said if line.startswith("version 3 failed to load")]
    entry = next((s for s in seen["status_when_3_failed"] if s["version"] == "3"), {})
    return {
        "no_request_failed": not any(p["kind"] == "failed" for p in rollout.problems),
        "every_answer_is_its_versions": not any(p["kind"] == "wrong" for p in rollout.problems),
        "no_client_went_back_a_version": all(a <= b for v in by_client.values() for a, b in zip(v, v[1:])),
        "half_written_version_never_answered": not any(a[3] == 3 and a[0] + a[1] < completed for a in rollout.answers),
        "before_only_1_after_only_3": {a[3] for a in answered if a[0] < before_end} == {1}
        and {a[3] for a in answered if a[0] >= rollout.events["version 3 served"]} == {3},
        "failed_version_listed_with_its_error": entry.get("state") == "END" and entry["status"]["error_code"] == "UNKNOWN"
        and "Read less bytes than requested" in entry["status"]["error_message"],
        "still_listed_after_the_hold": seen["status_after_hold"] == seen["status_when_3_failed"],
        "failure_said_once": len(failure_lines) == 1,
    }


def run_rollout(args, pixels: np.ndarray) -> dict:
    from mnist_dnn.lib.core import exporting, models
    expected = keras_probabilities(pixels)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir, spare = os.path.join(scratch, "mnist"), os.path.join(scratch, "spare")
        exporting.export_model(models.create_model(models.make_config("dense"), seed=SEEDS[1]), model_dir, version=1)
        spare = exporting.export_model(models.create_model(models.make_config("dense"), seed=SEEDS[3]), spare, version=3)
        process, url, said = start_server(model_dir, args.model_threads, args.poll_seconds)
        try:
            rollout = Rollout(url, pixels, expected, args.client_pause)
            bodies = [rollout.bodies(i, BATCHES[i % 2]) for i in range(args.rollout_clients)]

            async def everything():
                rollout.started = time.perf_counter()
                clients = [asyncio.create_task(rollout.client(i, BATCHES[i % 2], bodies[i]))
                           for i in range(args.rollout_clients)]
                try:
                    return await drive(rollout, model_dir, spare, args)
                finally:
                    rollout.stop.set()
                    await asyncio.gather(*clients)

            seen = asyncio.run(everything())
        finally:
            process.terminate()
            process.wait(30)
    return {"clients": args.rollout_clients, "events_s": rollout.events, "phases": phase_rows(rollout),
            "checks": checks(rollout, seen, said), "problems": rollout.problems[:20], "server_said": said, **seen}


def rollout_table(result: dict) -> str:
    lines = ["| phase | seconds | images per request | requests | errors | requests/s | images/s | p50 ms | p99 ms |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for phase, row in result["phases"].items():
        for batch in BATCHES:
            if f"batch_{batch}" in row:
                r = row[f"batch_{batch}"]
                lines.append(f"| {phase} | {row['seconds']:.1f} | {batch} | {r['requests']} | {r['errors']} | "
                             f"{r['requests_per_s']:,.1f} | {r['images_per_s']:,.0f} | {r['p50_ms'] or 0:.1f} | {r['p99_ms'] or 0:.1f} |")
    return "\n".join(lines)


def run_steady(args, pixels: np.ndarray) -> tuple[dict, str]:
    import tensorflow as tf
    from mnist_dnn.lib.core import export_dir, exporting, models
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or os.path.join(scratch, "mnist")
        if not args.model_dir:
            exporting.export_model(models.create_model(models.make_config("dense")), model_dir)
        process, url, _ = start_server(model_dir, args.model_threads)
        try:
            rows = {f"server_batch_{b}": lambda b=b: asyncio.run(load(url, pixels, b, args.clients, args.requests))
                    for b in BATCHES}
            signature = tf.saved_model.load(export_dir.resolve_model(model_dir)).signatures["serving_default"]
            for b in BATCHES:
                rows.update(in_process_rows(signature, pixels, b, args.clients, args.requests))
            rounds = harness.interleaved(rows, args.rounds)
        finally:
            process.terminate()
            process.wait(30)
        model = export_dir.resolve_model(model_dir) if args.model_dir else "the default dense model, random weights"
    results = {name: {key: harness.spread(r[key] for r in values) for key in ("images_per_s", "p50_ms", "p99_ms")}
               | {"errors": sum(r["errors"] for r in values), "rounds": values} for name, values in rounds.items()}
    table = "| row | images/s | p50 ms | p99 ms | errors |\n| --- | --- | --- | --- | --- |\n" + "\n".join(
        f"| {name} | {r['images_per_s']['median']:,.0f} | {r['p50_ms']['median']:.2f} | {r['p99_ms']['median']:.2f} "
        f"| {r['errors']} |" for name, r in results.items())
    return {"model": model, "rows": results}, table


def main():
    parser = harness.parser(__doc__, "serve_load.json")
    parser.add_argument("--parts", default="steady,rollout", help="steady, rollout or both (comma-separated)")
    parser.add_argument("--model_dir")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--model_threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--rollout_clients", type=int, default=8)
    parser.add_argument("--phase_seconds", type=float, default=25, help="the rollout's before and after phases")
    parser.add_argument("--hold_seconds", type=float, default=5, help="how long version 3 stays half written, "
                        "at least (and twice the time it took to be listed as failed)")
    parser.add_argument("--client_pause", type=float, default=0, help="seconds each rollout client waits between "
                        "its requests (--smoke: the server's loads and the export get their turn in one process)")
    parser.add_argument("--poll_seconds", type=float, default=1, help="the server's --file_system_poll_wait_seconds")
    args = harness.parse(parser, smoke={"clients": 2, "requests": 3, "rollout_clients": 2, "phase_seconds": 0.3,
                                        "hold_seconds": 0.1, "poll_seconds": 0.02, "client_pause": 0.1})
    parts = set(args.parts.split(","))
    if not parts or parts - {"steady", "rollout"}:
        parser.error(f"--parts must name steady, rollout or both, got {args.parts!r}")
    bench = harness.Benchmark("serve_load", args)
    pixels = images(args)
    results, tables = {}, []
    if "steady" in parts:
        results["steady"], table = run_steady(args, pixels)
        tables.append(table)
    if "rollout" in parts:
        results["rollout"] = run_rollout(args, pixels)
        tables.append(rollout_table(results["rollout"]))
    bench.write(results, "\n\n".join(tables))
    failed = [name for name, held in results.get("rollout", {}).get("checks", {}).items() if not held]
    if failed:
        raise harness.Failed(f"error: the rollout failed these checks: {', '.join(failed)}; "
                             f"first problems: {results['rollout']['problems'][:3]}")


if __name__ == "__main__":
    harness.main(main)
