"""Multi-worker training (``trainer.strategy=multi_worker``): two local worker processes, each
started by ``brevpipe run`` with its own ``TF_CONFIG``, make one job. Only the chief (worker 0)
writes the job bucket and the MLflow run; the metrics are a single-worker run's.

The model has no batch normalisation and no dropout, and every batch splits evenly between the
workers: batch norm would normalise each worker's half of a batch with that half's statistics,
each worker would draw its own dropout masks, and a batch of odd size splits unevenly (each
worker's mean loss then weighs alike in the gradient, not each sample). Without them the two
runs differ only by the order of float sums: the gradient of a batch is the mean of two
half-batch means, all-reduced.

The devel split (9 images in batches of 8) ends with a batch of one image, which two workers
used to split 1 + 0: on CPUs where TensorFlow runs oneDNN (AVX-512 VNNI/BF16, AMX), a Conv2D
given an empty batch returns the input's shape and worker 1 died ("input depth must be evenly
divisible by filter depth: 3 vs 8"). The input pipeline now evens such a batch out with the
one before (data.pipeline.batch_sizes), and this test keeps the case that failed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from brevpipe.data.pipeline import batch_sizes
from brevpipe.engine import cluster
from brevpipe.engine.runner import run_job
from brevpipe.errors import ConfigError
from tests.conftest import compose_config, free_port, tiny_overrides

pytestmark = pytest.mark.slow

SETTINGS = [
    "model.batch_norm=false",  # per-replica statistics: each worker would normalise its half
    "model.dropout=0.0",  # each replica would draw its own masks
    "sampler.max_epoch_samples=32",  # 4 batches of 8 per epoch, each split 4 + 4
    "runtime.verbose=2",
]
TOLERANCE = 1e-5  # measured: 1.2e-7 (float32 sums in another order)
WORKER_TIMEOUT_S = 180  # a worker that waits for a lost peer fails the test, not CI


def overrides(tmp_path: Path, name: str, *extra: str) -> list[str]:
    """Tiny-job overrides with a job root and MLflow store of their own under ``name``."""
    shared = [o for o in tiny_overrides(tmp_path) if not o.startswith(("job.root=", "tracking."))]
    store = f"sqlite:///{tmp_path / name / 'mlflow.db'}"
    return [*shared, f"job.root={tmp_path / name / 'jobs'}", f"tracking.uri={store}", *SETTINGS,
            *extra]  # fmt: skip


def start_workers(tmp_path: Path, args: list[str], count: int = 2) -> list[subprocess.Popen]:
    """``brevpipe run ARGS`` in ``count`` processes, each with its task in ``TF_CONFIG``."""
    hosts = [f"127.0.0.1:{free_port()}" for _ in range(count)]
    workers = []
    for index in range(count):
        tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        log = (tmp_path / f"worker{index}.log").open("w")
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "brevpipe", "run", *args], cwd=tmp_path, stdout=log,
            stderr=subprocess.STDOUT, env={**os.environ, "TF_CONFIG": json.dumps(tf_config)},
        ))  # fmt: skip
    return workers


def wait_all(workers: list[subprocess.Popen], timeout_s: float) -> list[int]:
    """Every worker's exit code; all of them are killed if one is not done in time."""
    deadline = time.monotonic() + timeout_s
    try:
        return [w.wait(timeout=max(1.0, deadline - time.monotonic())) for w in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def numbers(output: dict[str, Any]) -> dict[str, float]:
    """The metrics and every epoch's history of an output.json, flat."""
    flat = {f"metrics/{k}": v for k, v in output["metrics"].items()}
    for row in output["history"]:
        flat.update({f"history/{row['epoch']}/{k}": v for k, v in row.items() if k != "epoch"})
    return flat


@pytest.mark.timeout(400)
def test_two_workers_make_one_job_with_the_single_worker_metrics(tmp_path: Path) -> None:
    reference = overrides(tmp_path, "single", "trainer.strategy=default", "tracking=none")
    single = run_job(compose_config(reference))
    expected = numbers(json.loads(Path(single.output_url).read_text()))

    started = time.perf_counter()
    workers = start_workers(tmp_path, overrides(tmp_path, "multi", "trainer.strategy=multi_worker"))
    codes = wait_all(workers, WORKER_TIMEOUT_S)
    seconds = time.perf_counter() - started
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n\n".join(log[-3000:] for log in logs)

    root = tmp_path / "multi" / "jobs"
    buckets = list(root.iterdir())
    assert len(buckets) == 1, f"one job bucket, the chief's: {buckets}"
    output = json.loads((buckets[0] / "artifacts" / "output.json").read_text())
    assert output["job"]["status"] == "completed"
    assert output["config"]["trainer"]["strategy"] == "multi_worker"
    assert all(f.is_relative_to(buckets[0]) for f in files_under(root))
    assert f"job {output['job']['id']}" in logs[0]
    # the worker said what it is, and its scratch job root is gone
    assert "worker 1 of 2 processes" in logs[1] and "the chief writes the job" in logs[1]
    scratch = logs[1].split("scratch job root ", 1)[1].split(",", 1)[0]
    assert not Path(scratch).exists()
    assert "the chief wrote the job" in logs[1] and "  bucket:" not in logs[1]
    with sqlite3.connect(tmp_path / "multi" / "mlflow.db") as db:
        runs = db.execute("SELECT run_uuid, status FROM runs").fetchall()
    assert runs == [(output["mlflow"]["run_id"], "FINISHED")], "one MLflow run, the chief's"

    devel = output["samples"]["by_purpose"]["devel"]
    assert batch_sizes(devel, 8)[-1] < 2 <= min(batch_sizes(devel, 8, replicas=2)), \
        "the case that failed: a last devel batch with no image for worker 1"  # fmt: skip

    got = numbers(output)
    assert set(got) == set(expected)
    difference = max(abs(got[k] - expected[k]) for k in expected)
    print(f"\n2 workers: {seconds:.1f} s; max |metric - single-worker metric| = {difference:.3g} "
          f"over {len(expected)} numbers (tolerance {TOLERANCE:g})")  # fmt: skip
    assert difference <= TOLERANCE


def test_tf_config_is_checked_before_any_job_starts(tmp_path: Path, monkeypatch) -> None:
    cfg = compose_config(overrides(tmp_path, "bad", "trainer.strategy=multi_worker"))
    for value in (None, "{not json", '{"cluster": {"worker": ["h:1"]}, "task": {"index": 3}}'):
        if value is None:
            monkeypatch.delenv("TF_CONFIG", raising=False)
        else:
            monkeypatch.setenv("TF_CONFIG", value)
        with pytest.raises(ConfigError, match="TF_CONFIG"):
            run_job(cfg)
    assert not (tmp_path / "bad").exists(), "no job bucket, no MLflow store"


def test_only_the_chief_opens_a_sweeps_parent_run(tmp_path: Path, monkeypatch) -> None:
    from brevpipe.integrations.sweep import tracks_sweep

    cfg = compose_config(overrides(tmp_path, "sweep", "trainer.strategy=multi_worker"))
    for index, opens in ((0, True), (1, False)):
        tf_config = {"cluster": {"worker": ["a:1", "b:1"]},
                     "task": {"type": "worker", "index": index}}  # fmt: skip
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
        assert tracks_sweep(cfg) is opens
    single = compose_config(overrides(tmp_path, "sweep", "trainer.strategy=default"))
    assert tracks_sweep(single), "a one-process job of a sweep always does"


def test_the_chief_is_tensorflows() -> None:
    def role(cluster_spec: dict, kind: str, index: int) -> cluster.WorkerRole:
        tf_config = {"cluster": cluster_spec, "task": {"type": kind, "index": index}}
        return cluster.worker_role({"TF_CONFIG": json.dumps(tf_config)})

    two = {"worker": ["a:1", "b:1"]}
    assert role(two, "worker", 0).is_chief and not role(two, "worker", 1).is_chief
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert role(with_chief, "chief", 0).is_chief
    assert not role(with_chief, "worker", 0).is_chief
    assert role(with_chief, "worker", 1).workers == 3
    assert cluster.is_chief({}) and not cluster.is_chief(
        {"TF_CONFIG": json.dumps({"cluster": two, "task": {"type": "worker", "index": 1}})}
    )
    with pytest.raises(ConfigError, match="task.type"):
        role({**two, "ps": ["p:1"]}, "ps", 0)


def test_resuming_a_multi_worker_job_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """job.id of a job with stage outputs: every worker refuses, naming the way out, before
    TensorFlow connects the workers (so they all decide alike)."""
    job_id = "0f5e1c2a-resumed"
    stages = tmp_path / "resume" / "jobs" / job_id / "artifacts" / "stages"
    stages.mkdir(parents=True)
    (stages / "stage.json").write_text("{}")
    tf_config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
                 "task": {"type": "worker", "index": 1}}  # fmt: skip
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    cfg = compose_config(overrides(tmp_path, "resume", "trainer.strategy=multi_worker",
                                   f"job.id={job_id}"))  # fmt: skip
    with pytest.raises(ConfigError, match="trainer.strategy=multi_worker cannot do"):
        run_job(cfg)
