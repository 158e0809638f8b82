"""A 4-job sweep on the same 2,000 JPEGs in S3, with the data cache that jobs share and without.

moto's S3 server runs in this process on 127.0.0.1, behind a WSGI counter of the bytes it
sends for object reads (GET of a key) and for listings. ``--images`` JPEGs (4 classes, 160x160,
smooth shapes) go to ``s3://bench/data``. Then, once with ``runtime.cache_root=null`` (what
every job does today: list, download and decode the data itself) and once with a fresh local
cache root, ``--jobs`` jobs ``brevpipe run dataset=folder dataset.url=s3://bench/data seed=k``
run one after another, each in its own process as a cluster launcher runs them. Per job:
wall time; seconds from the job's first stage (once TensorFlow is imported) and from the
process start to the moment its training data is ready (the first ``input pipeline: ... ready`` line
with the cache, the first ``copied ... images`` line without); S3 bytes read. Prints the table
and the ratios; writes bench/results/data_cache.json.

    .venv/bin/python bench/data_cache.py [--images 2000] [--jobs 4] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import moto.server as moto_server
import numpy as np
from PIL import Image, ImageDraw
from werkzeug.serving import make_server

RESULTS = Path(__file__).parent / "results" / "data_cache.json"
CLASSES = ("circle", "square", "bar", "cross")
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
          "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


class QuietHandler(moto_server.MotoRequestHandler):
    def log_request(self, *args: Any) -> None:  # no line per request
        pass


class CountingS3(moto_server.ThreadedMotoServer):
    """moto's threaded S3 server, counting the response bytes of object reads and listings."""

    def __init__(self, port: int) -> None:
        super().__init__(ip_address="127.0.0.1", port=port, verbose=False)
        self.counts = {"object_bytes": 0, "object_gets": 0, "listings": 0}
        self._lock = threading.Lock()

    def _server_entry(self) -> None:
        app = moto_server.DomainDispatcherApplication(moto_server.create_backend_app)
        self._server = make_server(self._ip_address, self._port, self._count(app),
                                               True, request_handler=QuietHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    def _count(self, app: Any) -> Any:
        def counted(environ: dict[str, Any], start_response: Any) -> Any:
            path = environ.get("PATH_INFO", "").strip("/")
            is_object = environ["REQUEST_METHOD"] == "GET" and "/" in path
            is_listing = environ["REQUEST_METHOD"] == "GET" and "list-type" in environ.get(
                "QUERY_STRING", "")
            for chunk in app(environ, start_response):
                if is_object:
                    with self._lock:
                        self.counts["object_bytes"] += len(chunk)
                yield chunk
            with self._lock:
                self.counts["object_gets"] += is_object
                self.counts["listings"] += is_listing

        return counted

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def make_images(folder: Path, count: int) -> None:
    """``count`` JPEGs, 160x160, one smooth shape each on a noisy background, 4 classes."""
    rng = np.random.default_rng(0)
    for i in range(count):
        name = CLASSES[i % len(CLASSES)]
        canvas = Image.fromarray(rng.integers(90, 140, (160, 160, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(canvas)
        x, y, r = (int(v) for v in rng.integers((40, 40, 20), (120, 120, 36)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (x - r, y - r, x + r, y + r)
        if name == "circle":
            draw.ellipse(box, fill=colour)
        elif name == "square":
            draw.rectangle(box, fill=colour)
        elif name == "bar":
            draw.rectangle((x - r, y - 6, x + r, y + 6), fill=colour)
        else:
            draw.rectangle((x - r, y - 5, x + r, y + 5), fill=colour)
            draw.rectangle((x - 5, y - r, x + 5, y + r), fill=colour)
        (folder / name).mkdir(parents=True, exist_ok=True)
        canvas.save(folder / name / f"{i:05d}.jpg", quality=90)


def upload(folder: Path, endpoint: str) -> int:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("bench")
    fs.put(str(folder), "bench/data", recursive=True)
    return sum(p.stat().st_size for p in folder.rglob("*.jpg"))


def run_job(seed: int, workdir: Path, cache_root: str, epochs: int, server: CountingS3,
            env: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """One ``brevpipe run`` in its own process; its timings and the S3 bytes it read."""
    command = [
        sys.executable, "-m", "brevpipe", "run", "dataset=folder", "dataset.url=s3://bench/data",
        f"seed={seed}", f"job.root={workdir / 'jobs'}", "tracking=none",
        f"trainer.epochs={epochs}", "trainer.batch_size=32", "loader.target_size=[64,64]",
        f"runtime.cache_root={cache_root}",
    ]  # fmt: skip
    # the training data is ready: read through the cache, or copied from S3 without it
    ready = r"input pipeline: \d+ images ready" if cache_root != "null" else r"copied \d+ images in"
    before = server.snapshot()
    started = time.perf_counter()
    marks: dict[str, float] = {}
    lines = []
    with subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as process:  # fmt: skip
        assert process.stdout is not None
        for line in process.stdout:
            now = time.perf_counter() - started
            lines.append(line)
            if "job" not in marks and re.search(r"^stage \S+\s+running", line):
                marks["job"] = now  # the first stage starts (imports done)
            if "ready" not in marks and re.search(ready, line):
                marks["ready"] = now
    wall = time.perf_counter() - started
    if process.returncode != 0 or "ready" not in marks:
        sys.stderr.write("".join(lines[-40:]))
        raise SystemExit(f"job seed={seed} failed (exit {process.returncode})")
    after = server.snapshot()
    return {
        "seed": seed, "wall_s": round(wall, 2),
        "ready_after_process_start_s": round(marks["ready"], 2),
        "ready_after_job_start_s": round(marks["ready"] - marks["job"], 2),
        **{key: after[key] - before[key] for key in after},
    }  # fmt: skip


def sweep(label: str, cache_root: str, args: argparse.Namespace, server: CountingS3,
          env: dict[str, str], base: Path) -> dict[str, Any]:  # fmt: skip
    workdir = base / label
    workdir.mkdir()
    jobs = []
    started = time.perf_counter()
    for seed in range(1, args.jobs + 1):
        jobs.append(run_job(seed, workdir, cache_root, args.epochs, server, env))
        print(f"  {label:<13} seed={seed}  wall {jobs[-1]['wall_s']:6.1f} s  data ready after "
              f"{jobs[-1]['ready_after_job_start_s']:5.1f} s of the job  S3 objects read "
              f"{jobs[-1]['object_bytes'] / 1e6:6.1f} MB", flush=True)  # fmt: skip
    return {"total_wall_s": round(time.perf_counter() - started, 2), "jobs": jobs,
            "object_bytes": sum(j["object_bytes"] for j in jobs)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = CountingS3(port)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    env = {**os.environ, **S3_ENV, "AWS_ENDPOINT_URL_S3": endpoint, "PYTHONUNBUFFERED": "1",
           "TF_CPP_MIN_LOG_LEVEL": "2"}  # fmt: skip
    os.environ.update({k: env[k] for k in (*S3_ENV, "AWS_ENDPOINT_URL_S3")})
    with tempfile.TemporaryDirectory(prefix="brevpipe-bench-cache-") as tmp:
        base = Path(tmp)
        make_images(base / "images", args.images)
        dataset_bytes = upload(base / "images", endpoint)
        print(f"{args.images} JPEGs, {dataset_bytes / 1e6:.1f} MB, on moto S3 at {endpoint}")
        results = {
            "without_cache": sweep("without_cache", "null", args, server, env, base),
            "with_cache": sweep("with_cache", str(base / "cache"), args, server, env, base),
        }
    cached = results["with_cache"]["jobs"]
    first, later = cached[0]["ready_after_job_start_s"], [j["ready_after_job_start_s"]
                                                          for j in cached[1:]]  # fmt: skip
    summary = {
        "images": args.images, "dataset_bytes": dataset_bytes, "jobs": args.jobs,
        "bytes_read_without_cache": results["without_cache"]["object_bytes"],
        "bytes_read_with_cache": results["with_cache"]["object_bytes"],
        "reads_of_the_dataset_with_cache": round(results["with_cache"]["object_bytes"]
                                                 / dataset_bytes, 2),
        "wall_without_over_with": round(results["without_cache"]["total_wall_s"]
                                        / results["with_cache"]["total_wall_s"], 2),
        "job1_over_slowest_later_job_ready": round(first / max(later), 2) if later else None,
        "job1_over_mean_later_job_ready": round(first / (sum(later) / len(later)), 2)
        if later else None,
    }  # fmt: skip
    print(json.dumps(summary, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"summary": summary, **results, "python": sys.version,
                                   "machine": platform.machine(), "cpus": os.cpu_count()},
                                  indent=2))  # fmt: skip
    server.stop()


if __name__ == "__main__":
    main()
