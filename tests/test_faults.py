"""Faults injected on purpose between a job and its S3 storage (tests/faults.py, in front of
moto's S3 server): a job whose images, job root and data cache are all on S3 completes through
503s, 500s, dropped connections and delays with the clean job's exact results; a fault that no
retry absorbs fails the job fast, naming the URL, with nothing half-written."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from brevpipe.data.shapes import ShapesDataset
from brevpipe.engine.runner import run_job
from brevpipe.errors import BrevpipeError
from brevpipe.io import storage
from tests.conftest import compose_config
from tests.faults import FAULTS, FaultProxy

pytestmark = pytest.mark.slow

RATE = 0.1  # one request in ten gets a fault
TIMEOUT_S = 20  # storage.timeout_s of the job that cannot succeed


@pytest.fixture
def s3_images(tmp_path: Path, s3_bucket: str) -> str:
    folder = ShapesDataset(samples_per_class=16, image_size=72,
                           cache_dir=str(tmp_path / "datasets")).generate()  # fmt: skip
    storage.upload(folder, f"{s3_bucket}/images")
    return f"{s3_bucket}/images"


def s3_job(images: str, prefix: str, endpoint: str, *extra: str, reuse: bool = False) -> Any:
    """A tiny job with its images, job root and data cache on S3, through ``endpoint``: with
    a new client per call unless ``reuse`` (faults then meet fresh connections too; the
    clean reference job reuses its client, 20 s faster)."""
    return run_job(compose_config([
        "dataset=folder", f"dataset.url={images}", f"job.root={prefix}/jobs",
        f"runtime.cache_root={prefix}/cache", "loader.target_size=[32,32]",
        "model.filters=[8,16]", "model.dense=16", "trainer.epochs=2", "trainer.batch_size=8",
        "tracking=none", "runtime.verbose=0",
        f"+storage.options.s3.client_kwargs.endpoint_url={endpoint}",
        *([] if reuse else ["+storage.options.s3.skip_instance_cache=true"]),
        *extra,
    ]))  # fmt: skip


def results(job: Any) -> dict[str, Any]:
    output = storage.read_json(job.output_url)
    fs, root = storage.get_fs(job.bucket.artifact())
    artifacts = sorted(p[len(root.rstrip("/")) + 1 :] for p in fs.find(root)
                       if "/stages/" not in p)  # fmt: skip
    return {"status": output["job"]["status"], "metrics": output["metrics"],
            "history": output["history"], "samples": output["samples"],
            "artifacts": artifacts}  # fmt: skip


@pytest.mark.timeout(900)
def test_a_job_through_a_faulty_s3_connection_gets_the_clean_jobs_results(
    s3_server: str, s3_bucket: str, s3_images: str,
) -> None:  # fmt: skip
    started = time.perf_counter()
    clean = results(s3_job(s3_images, f"{s3_bucket}/clean", s3_server, reuse=True))
    clean_s = time.perf_counter() - started
    with FaultProxy(s3_server, rate=RATE, seed=7) as proxy:
        started = time.perf_counter()
        faulty = results(s3_job(s3_images, f"{s3_bucket}/faulty", proxy.url))
        faulty_s = time.perf_counter() - started
    counts = dict(proxy.counts)
    print(f"\nfaulty S3: {counts['requests']} requests, "
          + ", ".join(f"{kind} {counts.get(kind, 0)}" for kind in FAULTS)
          + f"; {counts.get('retries', 0)} retries seen; {faulty_s:.1f} s against "
          f"{clean_s:.1f} s clean (one client)")  # fmt: skip
    assert sum(counts.get(kind, 0) for kind in FAULTS) >= 10, counts
    assert all(counts.get(kind, 0) for kind in FAULTS), f"every kind of fault was met: {counts}"
    assert counts.get("retries", 0) >= counts["slowdown"] + counts["internal_error"], counts
    assert faulty["status"] == "completed"
    assert faulty["samples"] == clean["samples"], "no image silently skipped"
    assert faulty["artifacts"] == clean["artifacts"], "no artifact missing"
    assert faulty["history"] == clean["history"]
    assert faulty["metrics"] == clean["metrics"]


@pytest.mark.timeout(600)
def test_a_fault_no_retry_absorbs_fails_the_job_naming_the_url(
    s3_server: str, s3_bucket: str, s3_images: str,
) -> None:  # fmt: skip
    bucket = s3_bucket.removeprefix("s3://")
    prefix = f"{s3_bucket}/unlucky"
    with FaultProxy(s3_server, fail_prefix=f"/{bucket}/images") as proxy:
        started = time.perf_counter()
        with pytest.raises(BrevpipeError) as failure:
            s3_job(s3_images, prefix, proxy.url, f"storage.timeout_s={TIMEOUT_S}")
        seconds = time.perf_counter() - started
    message = str(failure.value)
    print(f"\nfailed after {seconds:.1f} s, {proxy.counts['always_503']} requests answered "
          f"503: {message}")  # fmt: skip
    assert s3_images in message and "\n" not in message.strip()
    assert seconds < TIMEOUT_S + 120, "within the time limit and the client's retries"
    # the job's options (the proxy) stayed with the job: this reads from the server
    fs, _ = storage.get_fs(prefix)
    (output_path,) = fs.glob(f"{prefix}/jobs/*/artifacts/output.json")
    output = json.loads(fs.cat(output_path))  # valid JSON: the last complete version
    assert output["job"]["status"] == "failed" and s3_images in output["job"]["error"]
    assert not [p for p in fs.find(f"{prefix}/jobs") if ".tmp-" in p], "nothing half-written"
