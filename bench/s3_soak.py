"""S3 soak: consecutive end-to-end jobs reading ~2,000 images from moto's S3 server.

Each job is a separate ``brevpipe run`` process (train, evaluate, preview, export, report) with
the dataset and the job root on S3; a job that does not end within ``--timeout`` seconds counts
as hung (its Python stacks are dumped first, with py-spy when it is installed). Prints one line
per job and a summary; writes bench/results/s3_soak.json.

    .venv/bin/python bench/s3_soak.py [--jobs 20] [--images 2000] [--timeout 600]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "s3_soak.json"
CLASSES = ("circle", "square", "triangle")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def upload_dataset(fs, images: int) -> None:
    """``images`` small PNGs (32x32, noise + a class-dependent mean) in folders per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = {}
    for i in range(images):
        label = i % len(CLASSES)
        pixels = rng.normal(60 + 60 * label, 30, (32, 32, 3)).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        blobs[f"data/parts/{CLASSES[label]}/{i:05d}.png"] = buffer.getvalue()
    fs.mkdir("data")
    fs.mkdir("jobs")
    fs.pipe(blobs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per S3 request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "soak", "AWS_SECRET_ACCESS_KEY": "soak",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    os.environ.update(env)
    import s3fs

    upload_dataset(s3fs.S3FileSystem(), args.images)
    command = [sys.executable, "-m", "brevpipe", "run", "dataset=folder",
               "dataset.url=s3://data/parts", "job.root=s3://jobs/soak", "tracking=none",
               "loader.target_size=[32,32]", f"trainer.epochs={args.epochs}"]
    results = []
    for number in range(1, args.jobs + 1):
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            output, _ = process.communicate(timeout=args.timeout)
            status = "completed" if process.returncode == 0 else f"failed ({process.returncode})"
        except subprocess.TimeoutExpired:
            status = "hung"
            if shutil.which("py-spy"):
                dump = subprocess.run(["py-spy", "dump", "--pid", str(process.pid)],
                                      capture_output=True, text=True)
                print(dump.stdout[-6000:])
            process.kill()
            output, _ = process.communicate()
        seconds = time.perf_counter() - started
        results.append({"job": number, "status": status, "seconds": round(seconds, 1)})
        print(f"job {number:>2}: {status:<12} {seconds:6.1f} s", flush=True)
        if status.startswith("failed"):
            print(output[-3000:])
    server.stop()
    counts = {s: sum(r["status"] == s for r in results) for s in {r["status"] for r in results}}
    summary = {"jobs": args.jobs, "images": args.images, "counts": counts, "results": results}
    print(json.dumps(counts))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if counts.get("completed") == args.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
