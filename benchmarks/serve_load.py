"""Load on `mnist_dnn.serve` over loopback, against calling the SavedModel in process.

    flock /tmp/mnist_bench.lock python benchmarks/serve_load.py [--model_dir=exports/mnist] \
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
"""

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
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
    return {"requests": len(latencies) + errors, "errors": errors, "wall_s": round(wall, 3),
            "requests_per_s": round(len(latencies) / wall, 1), "images_per_s": round(batch * len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


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


def in_process_rows(model_path: str, pixels: np.ndarray, batch: int, clients: int, requests: int) -> dict:
    """One caller, and `clients` threads, calling the SavedModel's signature with batches of `batch` images."""
    import tensorflow as tf
    signature = tf.saved_model.load(model_path).signatures["serving_default"]
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


def start_server(model_dir: str, threads: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "mnist_dnn.serve", f"--model_dir={model_dir}", "--port=0",
                                f"--model_threads={threads}"], stdout=subprocess.PIPE, text=True, cwd=harness.ROOT)
    line = process.stdout.readline()
    if not line.startswith("Serving"):
        process.kill()
        raise SystemExit(f"error: the server did not start: {line}")
    return process, line.split(" at ")[1].split()[0] + "v1/models/mnist:predict"


def main():
    parser = harness.parser(__doc__, "serve_load.json")
    parser.add_argument("--model_dir")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--model_threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = harness.parse(parser, smoke={"clients": 2, "requests": 3})
    bench = harness.Benchmark("serve_load", args)
    from mnist_dnn.lib.core import export_dir, exporting, models
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or os.path.join(scratch, "mnist")
        if not args.model_dir:
            exporting.export_model(models.create_model(models.make_config("dense")), model_dir)
        pixels = images(args)
        process, url = start_server(model_dir, args.model_threads)
        try:
            rows = {f"server_batch_{b}": lambda b=b: asyncio.run(load(url, pixels, b, args.clients, args.requests))
                    for b in BATCHES}
            for b in BATCHES:
                path = export_dir.resolve_model(model_dir)
                rows.update(in_process_rows(path, pixels, b, args.clients, args.requests))
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
    bench.write({"model": model, "rows": results}, table)


if __name__ == "__main__":
    harness.main(main)
