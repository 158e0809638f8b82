"""Serving overhead: single-image ``POST /predict`` over loopback HTTP against calling the model
in this process.

A ``small_cnn`` (64x64 input, 3 classes; untrained: the arithmetic is the same) is exported as
``saved_model.tar.gz`` with its model.json, as the export stage does, and served by
``brevpipe serve`` in a subprocess on 127.0.0.1. Clients: ``--concurrency`` threads with a
keep-alive ``httpx.Client`` each send ``--requests`` single-image multipart requests (JPEG
128x128 shapes, in turn), bounded by ``--max-seconds``; a warm-up of 10 requests is not timed.
Baselines in this process, same images, same count, one thread: ``predictor.predict`` on the
already-decoded image (the model alone), and decode + predict through the service's own
``ModelService.predict`` (what /predict does without HTTP). Prints requests/s, p50/p99 latency
and the ratios; writes bench/results/serving.json.

    .venv/bin/python bench/serving.py [--requests 200] [--concurrency 8] [--max-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tensorflow as tf

from brevpipe import __version__
from brevpipe.data.loader import ImageLoader
from brevpipe.data.shapes import ShapesDataset
from brevpipe.models.small_cnn import build
from brevpipe.serving.auth import make_token
from brevpipe.serving.predictor import load_predictor
from brevpipe.serving.service import ModelService

RESULTS = Path(__file__).parent / "results" / "serving.json"
SECRET = "bench-secret-0123456789abcdef0123456789abcdef"
CLASSES = ["circle", "square", "triangle"]
WARMUP = 10


def export_archive(folder: Path) -> Path:
    """``saved_model.tar.gz`` + model.json for an untrained small_cnn (as the export stage)."""
    loader = ImageLoader(target_size=[64, 64])
    model = build(loader.output_shape, len(CLASSES))
    model.export(str(folder / "saved_model"), verbose=False)
    metadata = {"classes": CLASSES, "task": "single_label", "multi_label": False,
                "threshold": None, "input_shape": list(loader.output_shape),
                "preprocessing": loader.metadata(), "brevpipe_version": __version__}  # fmt: skip
    (folder / "model.json").write_text(json.dumps(metadata, indent=2))
    archive = folder / "saved_model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder / "saved_model", arcname="saved_model")
        tar.add(folder / "model.json", arcname="model.json")
    return archive


def summary(latencies: list[float], seconds: float) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(latencies),
        "seconds": seconds,
        "requests_per_second": len(latencies) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def start_server(archive: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "BREVPIPE_JWT_SECRET": SECRET, "TF_CPP_MIN_LOG_LEVEL": "2"}
    server = subprocess.Popen(
        [sys.executable, "-m", "brevpipe", "serve", str(archive), "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"brevpipe serve did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.25)


def http_load(url: str, images: list[tuple[str, bytes]], count: int, concurrency: int,
              max_seconds: float) -> tuple[dict[str, float], list[dict]]:  # fmt: skip
    """``count`` single-image requests from ``concurrency`` threads; latencies and answers."""
    headers = {"Authorization": f"Bearer {make_token(SECRET, 3600)}"}
    latencies: list[float] = []
    answers: list[dict] = []
    lock = threading.Lock()
    issued = iter(range(count))
    errors: list[str] = []

    def client() -> None:
        with httpx.Client(timeout=30, headers=headers) as http:
            for i in range(WARMUP // concurrency + 1):
                name, data = images[i % len(images)]
                http.post(f"{url}/predict", files=[("files", (name, data))]).raise_for_status()
            barrier.wait()
            deadline = time.monotonic() + max_seconds
            while time.monotonic() < deadline:
                with lock:
                    i = next(issued, None)
                if i is None:
                    return
                name, data = images[i % len(images)]
                started = time.perf_counter()
                response = http.post(f"{url}/predict", files=[("files", (name, data))])
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code != 200:
                        errors.append(response.text)
                    else:
                        latencies.append(elapsed)
                        answers.append(response.json()["predictions"][0])

    barrier = threading.Barrier(concurrency + 1, timeout=120)  # a failed client breaks it
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, first: {errors[0]}")
    return summary(latencies, seconds), answers


def in_process(call: Callable[[Any], Any], count: int, items: list) -> dict[str, float]:
    """``count`` calls in this thread after a warm-up; latencies."""
    for i in range(WARMUP):
        call(items[i % len(items)])
    latencies = []
    started = time.perf_counter()
    for i in range(count):
        t = time.perf_counter()
        call(items[i % len(items)])
        latencies.append(time.perf_counter() - t)
    return summary(latencies, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="brevpipe-bench-serving-") as tmp:
        folder = Path(tmp)
        archive = export_archive(folder)
        shapes = ShapesDataset(samples_per_class=8, image_size=128, formats=["jpg"],
                               cache_dir=str(folder / "data")).find_samples()  # fmt: skip
        images = [(Path(p).name, Path(p).read_bytes()) for p in shapes["path"]]

        port = args.port
        if not port:
            import socket

            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        server = start_server(archive, port, folder / "server.log")
        try:
            http, answers = http_load(f"http://127.0.0.1:{port}", images, args.requests,
                                      args.concurrency, args.max_seconds)  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=30)

        predictor = load_predictor(str(archive))
        service = ModelService(predictor, task_threads=1)
        decoded = [service.decode(name, data)[None] for name, data in images]
        count = http["requests"]
        direct = in_process(predictor.predict, count, decoded)
        decode_predict = in_process(lambda item: service.predict([item]), count, images)
        service.close()
        by_name = {name: service.predict([(name, data)])[0] for name, data in images}
        worst = max(abs(a["scores"][c] - by_name[a["name"]]["scores"][c])
                    for a in answers for c in CLASSES)  # fmt: skip

    ratio = http["requests_per_second"] / direct["requests_per_second"]
    ratio_decode = http["requests_per_second"] / decode_predict["requests_per_second"]
    rows = (("HTTP POST /predict", http), ("in-process predictor.predict", direct),
            ("in-process decode + predict", decode_predict))  # fmt: skip
    for label, row in rows:
        print(f"{label:30s} {row['requests']:4d} in {row['seconds']:6.2f} s: "
              f"{row['requests_per_second']:7.1f}/s  p50 {row['p50_ms']:6.2f} ms  "
              f"p99 {row['p99_ms']:6.2f} ms")  # fmt: skip
    print(f"HTTP / model alone = {ratio:.3f} (requests/s); HTTP / decode + predict = "
          f"{ratio_decode:.3f}; concurrency {args.concurrency}; largest score difference "
          f"HTTP vs in-process {worst:.1e}")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "serving", "image": "JPEG 128x128 -> 64x64, small_cnn, 3 classes",
        "requests": args.requests, "concurrency": args.concurrency,
        "max_seconds": args.max_seconds, "http": http, "direct_predict": direct,
        "direct_decode_predict": decode_predict, "ratio_http_to_direct": ratio,
        "ratio_http_to_decode_predict": ratio_decode, "max_score_difference": worst,
        "machine": {"python": platform.python_version(), "tensorflow": tf.__version__,
                    "cpus": os.cpu_count()},
    }, indent=2))  # fmt: skip
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
