"""The dashboard over a root of 1,000 jobs: how long the jobs page takes on the first listing
and after it, on a local folder and on S3 (moto's server), beside ``brevpipe jobs list`` on the
same root (what a user runs instead); and how long a status change takes to reach an open page
over server-sent events.

The jobs are written by a fixture writer (a real job's output.json, with new ids, statuses and
start times), not trained. Each figure comes from a real ``brevpipe ui`` process; the page is
fetched over HTTP. Prints medians and ranges; writes bench/results/ui_listing.json.

    .venv/bin/python bench/ui_listing.py [--jobs 1000] [--rounds 5] [--no-s3]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import fsspec
import httpx

from brevpipe.ui.pages import event_name

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results" / "ui_listing.json"
TEMPLATE = REPO / "tests" / "fixtures" / "job-2026-12-06" / "artifacts" / "output.json"
STATUSES = ("completed", "completed", "completed", "failed", "stopped")
RUNNING = 5  # jobs left running, with a fresh heartbeat: the SSE latency is measured on them


def write_jobs(root: str, count: int) -> list[str]:
    """``count`` job folders under ``root`` (any fsspec URL); returns the running ones' ids."""
    fs, path = fsspec.core.url_to_fs(root)
    template = json.loads(TEMPLATE.read_text())
    start = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    files, running = {}, []
    for i in range(count):
        job_id = str(uuid.UUID(int=i + 1))
        output = copy.deepcopy(template)
        began = start + dt.timedelta(minutes=7 * i)
        status = "running" if i >= count - RUNNING else STATUSES[i % len(STATUSES)]
        output["job"].update(id=job_id, status=status, start=began.isoformat(),
                             end=None if status == "running" else
                             (began + dt.timedelta(seconds=40 + i % 90)).isoformat(),
                             bucket=f"{root}/{job_id}")  # fmt: skip
        output["metrics"]["devel/accuracy"] = round(0.5 + (i * 37 % 50) / 100, 4)
        files[f"{path}/{job_id}/artifacts/output.json"] = json.dumps(output).encode()
        if status == "running":
            running.append(job_id)
            files[f"{path}/{job_id}/control/heartbeat.json"] = json.dumps({
                "time": dt.datetime.now(dt.timezone.utc).isoformat(), "period_s": 3600,
                "session": output.get("job", {}).get("session")}).encode()  # fmt: skip
    if fs.protocol in ("file", "local") or "file" in fs.protocol:
        for name, data in files.items():
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            Path(name).write_bytes(data)
    else:
        names = list(files)
        for at in range(0, len(names), 200):
            fs.pipe({n: files[n] for n in names[at : at + 200]})
    return running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed_get(url: str) -> float:
    started = time.perf_counter()
    response = httpx.get(url, timeout=300)
    response.raise_for_status()
    return time.perf_counter() - started


def sse_latency(base: str, root: str, job_id: str) -> float:
    """Seconds from rewriting a running job's output.json as completed to its event arriving."""
    fs, path = fsspec.core.url_to_fs(root)
    page = httpx.get(base + "/", timeout=60).text
    since = re.search(r"/events\?since=(\d+)", page).group(1)
    url = f"{path}/{job_id}/artifacts/output.json"
    written: list[float] = []

    def finish() -> None:
        time.sleep(1.0)
        output = json.loads(fs.cat(url))
        output["job"].update(status="completed", end=dt.datetime.now(dt.timezone.utc).isoformat())
        fs.pipe(url, json.dumps(output).encode())
        written.append(time.perf_counter())

    threading.Thread(target=finish).start()
    with httpx.stream("GET", f"{base}/events?since={since}", timeout=60) as stream:
        for line in stream.iter_lines():
            if line == f"event: {event_name(job_id)}":
                return time.perf_counter() - written[0]
    raise RuntimeError("the stream ended without the event")


def measure(root: str, rounds: int, env: dict[str, str], running: list[str]) -> dict:
    """First and later jobs pages, ``brevpipe jobs list``, SSE latency: one ``brevpipe ui``."""
    listing = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "brevpipe", "jobs", "list", "--root", root,
                        "--format", "json"], env=env, check=True, capture_output=True)
        listing.append(time.perf_counter() - started)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "brevpipe", "ui", "--root", root, "--port",
                               str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                httpx.get(base + "/static/app.css", timeout=5)  # up, and nothing listed yet
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        first = timed_get(base + "/")
        later = [timed_get(base + "/") for _ in range(rounds)]
        sorted_page = [timed_get(base + "/?sort=metric&page=10") for _ in range(rounds)]
        latency = [sse_latency(base, root, job_id) for job_id in running[:rounds]]
    finally:
        server.terminate()
        server.wait(30)
    return {"first_page_s": first, "later_page_s": later, "sorted_page_10_s": sorted_page,
            "jobs_list_cli_s": listing, "sse_latency_s": latency}  # fmt: skip


def show(name: str, figures: dict) -> None:
    print(f"\n{name}")
    for key, value in figures.items():
        if isinstance(value, list):
            print(f"  {key:<20} median {statistics.median(value):6.3f}  "
                  f"range {min(value):.3f}-{max(value):.3f}")
        else:
            print(f"  {key:<20} {value:6.3f}")
    cli = statistics.median(figures["jobs_list_cli_s"])
    later = statistics.median(figures["later_page_s"])
    print(f"  first page / `brevpipe jobs list`: {figures['first_page_s'] / cli:.2f}x; "
          f"later page / `brevpipe jobs list`: {later / cli:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-s3", action="store_true")
    args = parser.parse_args()
    results = {"jobs": args.jobs, "machine": f"{os.cpu_count()} cores"}
    with tempfile.TemporaryDirectory() as work:
        env = {**os.environ, "XDG_CACHE_HOME": f"{work}/cache"}
        root = f"{work}/jobs"
        running = write_jobs(root, args.jobs)
        results["local"] = measure(root, args.rounds, env, running)
        show(f"local folder, {args.jobs} jobs", results["local"])
        if not args.no_s3:
            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request
            port = free_port()
            moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            moto.start()
            s3_env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                      "AWS_DEFAULT_REGION": "us-east-1",
                      "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}  # fmt: skip
            os.environ.update(s3_env)
            try:
                fsspec.filesystem("s3").mkdir("bench-ui")
                running = write_jobs("s3://bench-ui/jobs", args.jobs)
                results["s3"] = measure("s3://bench-ui/jobs", args.rounds, {**env, **s3_env},
                                        running)  # fmt: skip
                show(f"S3 (moto on 127.0.0.1), {args.jobs} jobs", results["s3"])
            finally:
                moto.stop()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"\nwritten {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
