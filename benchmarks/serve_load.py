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
--clients threads, the same number of calls in all.
"""

import argparse
import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
import tensorflow as tf

from mnist_dnn.lib.core import data, export_dir, exporting, models

BATCHES = (1, 100)


def images(idx_dir: str | None, count: int = 1000) -> np.ndarray:
    """MNIST test images (uint8 [N, 28, 28, 1]) if given, else random pixels."""
    if idx_dir:
        test = data.load_splits(data.DataConfig("mnist", tempfile.mkdtemp(), idx_dir))["test"]
        return test.images.numpy()[:count].reshape(-1, 28, 28, 1)
    return np.random.default_rng(0).integers(0, 256, (count, 28, 28, 1)).astype(np.uint8)


def summary(latencies: list[float], wall: float, batch: int, errors: int) -> dict:
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies) + errors, "errors": errors, "wall_s": round(wall, 3),
            "requests_per_s": round(len(latencies) / wall, 1), "images_per_s": round(batch * len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


async def one_client(url: str, bodies: list[bytes], latencies: list, errors: list) -> None:
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


def in_process(model_path: str, pixels: np.ndarray, batch: int, clients: int, requests: int) -> dict:
    signature = tf.saved_model.load(model_path).signatures["serving_default"]
    batches = [tf.constant(pixels[(i * batch) % (len(pixels) - batch + 1):][:batch]) for i in range(requests)]

    def caller(calls):
        times = []
        for tensor in calls:
            started = time.perf_counter()
            signature(images=tensor)["classes"].numpy()
            times.append(time.perf_counter() - started)
        return times

    caller(batches[:20])  # warm-up
    results = {}
    started = time.perf_counter()
    times = caller(batches * clients)
    results["one_caller"] = summary(times, time.perf_counter() - started, batch, 0)
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        times = [t for ts in pool.map(caller, [batches] * clients) for t in ts]
        results[f"{clients}_threads"] = summary(times, time.perf_counter() - started, batch, 0)
    return results


def start_server(model_dir: str, threads: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "mnist_dnn.serve", f"--model_dir={model_dir}", "--port=0",
                                f"--model_threads={threads}"], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("Serving"):
        raise SystemExit(f"the server did not start: {line}")
    return process, line.split(" at ")[1].split()[0] + "v1/models/mnist:predict"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir")
    parser.add_argument("--idx_dir")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--model_threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    model_dir = args.model_dir or os.path.join(tempfile.mkdtemp(), "mnist")
    if not args.model_dir:
        exporting.export_model(models.create_model(models.make_config("dense")), model_dir)
    pixels = images(args.idx_dir)
    process, url = start_server(model_dir, args.model_threads)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": os.getloadavg(),
              "clients": args.clients, "requests_per_client": args.requests, "model_threads": args.model_threads,
              "model": export_dir.resolve_model(model_dir), "server": {}, "in_process": {}}
    try:
        for batch in BATCHES:
            result["server"][f"batch_{batch}"] = asyncio.run(load(url, pixels, batch, args.clients, args.requests))
            print(f"server, batch {batch}: {result['server'][f'batch_{batch}']}", flush=True)
    finally:
        process.terminate()
        process.wait(30)
    for batch in BATCHES:
        result["in_process"][f"batch_{batch}"] = in_process(export_dir.resolve_model(model_dir), pixels, batch,
                                                            args.clients, args.requests)
        print(f"in process, batch {batch}: {result['in_process'][f'batch_{batch}']}", flush=True)
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
