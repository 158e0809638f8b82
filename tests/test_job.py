"""The Job: bucket layout, lifecycle, output.json contract, secrets, on local and S3 roots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from brevpipe.engine.runner import run_job
from brevpipe.io import storage
from brevpipe.jobs.job import Job, JobStatus

OUTPUT_KEYS = {
    "schema_version", "job", "config", "seed", "metrics", "history", "stages", "samples",
    "model", "environment", "mlflow",
}  # fmt: skip


def make_job(root: str, **config) -> Job:
    return Job(root=root, config={"seed": 1, **config}, seed=1, name="unit", pipeline="p")


@pytest.mark.parametrize("root_kind", ["local", "memory", "s3"])
def test_lifecycle_and_output_json(root_kind: str, tmp_path: Path, request) -> None:
    root = {
        "local": lambda: str(tmp_path / "jobs"),
        "memory": lambda: "memory://jobs-lifecycle",
        "s3": lambda: request.getfixturevalue("s3_bucket") + "/jobs",
    }[root_kind]()
    job = make_job(root)
    assert job.status == JobStatus.CREATED
    job.open()
    assert storage.exists(storage.join(job.bucket_url, "info.json"))
    running = storage.read_json(job.output_url)
    assert running["job"]["status"] == "running"
    job.add_metric("devel/accuracy", 0.5)
    job.add_epoch(1, {"loss": 1.0})
    job.complete()
    output = storage.read_json(job.output_url)
    assert set(output) >= OUTPUT_KEYS
    assert output["job"]["status"] == "completed" and output["job"]["end"]
    assert output["job"]["bucket"] == job.bucket_url
    assert output["metrics"] == {"devel/accuracy": 0.5}
    assert output["history"] == [{"epoch": 1, "loss": 1.0}]
    assert output["environment"]["python"].startswith("3.")
    fs, path = storage.get_fs(job.bucket.artifact())
    assert not [p for p in fs.find(path) if ".tmp-" in p], "atomic writes leave no temp files"


def test_temp_path_is_local_scratch_removed_at_the_end(tmp_path: Path) -> None:
    job = make_job(str(tmp_path))
    scratch = Path(job.temp_path("a", "b.txt"))
    scratch.write_text("x")
    job.open()
    job.complete()
    assert not scratch.exists()


def test_secrets_never_reach_info_or_output_json(tmp_path: Path) -> None:
    secret = "AKIA-SUPER-SECRET-VALUE"
    job = make_job(
        str(tmp_path),
        storage={"options": {"s3": {"secret": secret, "key": secret, "client_kwargs": {}}}},
        tracking={"token": secret, "password": secret},
    )
    job.open()
    job.complete()
    for name in ("info.json", "artifacts/output.json"):
        text = (Path(job.bucket_url) / name).read_text()
        assert secret not in text
        assert "***" in text


def test_failed_stage_marks_the_job_failed_with_the_error(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("tracking=none", "pipeline.stages.split._target_=tests.test_job.explode")
    with pytest.raises(RuntimeError, match="the split broke"):
        run_job(cfg)
    (bucket,) = (tmp_path / "jobs").iterdir()
    output = json.loads((bucket / "artifacts" / "output.json").read_text())
    assert output["job"]["status"] == "failed"
    assert output["job"]["error"] == "RuntimeError: the split broke"
    assert output["stages"]["samples"]["status"] == "completed"
    assert output["stages"]["split"]["status"] == "failed"


def test_a_stage_that_cannot_be_imported_stops_before_any_job(tiny_config, tmp_path) -> None:
    from brevpipe.errors import ConfigError

    cfg = tiny_config("tracking=none", "pipeline.stages.split._target_=json.no_such_function")
    with pytest.raises(ConfigError, match="pipeline.stages.split._target_: cannot import "
                                          "'json.no_such_function'"):
        run_job(cfg)
    assert not (tmp_path / "jobs").exists()


def test_a_stage_is_handed_only_what_it_declares_or_stops_with_its_name(tiny_config,
                                                                          tmp_path) -> None:
    """A stage function that takes an input its declaration does not pass (here the split,
    declared without its samples) stops before it runs, naming the stage and what is missing;
    nothing is read behind the declaration's back."""
    from brevpipe.errors import ConfigError

    cfg = tiny_config("tracking=none", "pipeline.stages.split.inputs=[]")
    with pytest.raises(ConfigError, match=r"stage 'split' \(stage:split_samples\) cannot take "
                                          r"what the pipeline declares for it: .*'samples'"):
        run_job(cfg)
    (bucket,) = (tmp_path / "jobs").iterdir()
    output = json.loads((bucket / "artifacts" / "output.json").read_text())
    assert output["job"]["status"] == "failed"
    assert output["stages"]["samples"]["status"] == "completed"
    assert not (bucket / "artifacts" / "sample_identification.csv").exists(), "split never ran"


def explode(ctx, **params):
    """A stage that fails while it runs."""
    raise RuntimeError("the split broke")


def test_interrupt_marks_the_job_stopped(tiny_config, tmp_path: Path) -> None:
    cfg = tiny_config("tracking=none", "pipeline.stages.samples._target_=tests.test_job.interrupt")
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg)
    (bucket,) = (tmp_path / "jobs").iterdir()
    output = json.loads((bucket / "artifacts" / "output.json").read_text())
    assert output["job"]["status"] == "stopped"


def interrupt(ctx, **params):
    """A stage standing in for the user pressing Ctrl-C."""
    raise KeyboardInterrupt
