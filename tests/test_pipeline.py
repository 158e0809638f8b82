"""End to end: the classification pipeline on tiny generated data, trained for real."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from brevpipe.data.shapes import ShapesDataset
from brevpipe.engine.runner import run_job
from brevpipe.engine.tensorflow_import import NOTICES
from brevpipe.errors import DataError
from brevpipe.io import storage
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def output_of(job) -> dict:
    return storage.read_json(job.output_url)


def test_default_pipeline_end_to_end_with_mlflow(tiny_config, tmp_path: Path) -> None:
    job = run_job(tiny_config("seed=3"))
    output = output_of(job)
    assert output["job"]["status"] == "completed"
    assert not [t.name for t in threading.enumerate() if t.name.startswith("checkpoint")], \
        "the checkpoint writer's thread ends with training"  # fmt: skip
    bucket = Path(job.bucket_url)
    for name in ("info.json", "artifacts/output.json", "artifacts/samples.csv",
                 "artifacts/sample_identification.csv", "artifacts/predictions.csv",
                 "artifacts/samples_preview.png",
                 "artifacts/model/model.keras", "artifacts/model/saved_model.tar.gz",
                 "artifacts/model/model.json"):  # fmt: skip
        assert (bucket / name).is_file(), name
    assert list(output["stages"]) == [
        "samples", "split", "train", "evaluate", "preview", "export", "report"
    ]  # fmt: skip
    assert all(s["status"] == "completed" for s in output["stages"].values())
    assert 0.0 <= output["metrics"]["devel/accuracy"] <= 1.0
    assert [h["epoch"] for h in output["history"]] == [1, 2]
    assert output["samples"]["count"] == 48
    assert output["model"]["classes"] == ["circle", "square", "triangle"]

    client = MlflowClient(tracking_uri=output["mlflow"]["tracking_uri"])
    run = client.get_run(output["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["brevpipe.job_id"] == job.id
    assert run.data.params["seed"] == "3"
    assert run.data.params["trainer.epochs"] == "2"
    for name, value in output["metrics"].items():
        assert run.data.metrics[name] == pytest.approx(value)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "output.json" in artifacts


def test_same_seed_same_metrics_different_seed_differs(tiny_config) -> None:
    first = output_of(run_job(tiny_config("seed=3", "tracking=none")))
    second = output_of(run_job(tiny_config("seed=3", "tracking=none")))
    assert first["metrics"] == second["metrics"]
    assert first["history"] == second["history"]
    other = output_of(run_job(tiny_config("seed=4", "tracking=none")))
    assert other["history"] != first["history"]


def test_crashed_job_resumes_from_its_last_epoch_with_the_same_metrics(
    tiny_config, tmp_path: Path
) -> None:
    switch = tmp_path / "crash-now"
    switch.touch()
    crash = (f"+trainer.callbacks=[{{_target_: tests.helpers.RaiseAtEpoch, epoch: 1, "
             f"switch: '{switch}'}}]")  # fmt: skip
    settings = ("seed=5", "tracking=none", "trainer.epochs=3", crash)
    with pytest.raises(RuntimeError, match="simulated crash after epoch 1"):
        run_job(tiny_config(*settings))
    (bucket,) = Path(tiny_config().job.root).iterdir()
    crashed = json.loads((bucket / "artifacts" / "output.json").read_text())
    assert crashed["job"]["status"] == "failed"
    assert crashed["stages"]["split"]["status"] == "completed"
    assert [h["epoch"] for h in crashed["history"]] == [1]
    checkpoint = bucket / "artifacts" / "stages" / "train" / "checkpoint"
    assert json.loads((checkpoint / "checkpoint.json").read_text())["epoch"] == 1

    resumed = output_of(run_job(tiny_config(*settings, f"job.id={bucket.name}")))
    assert resumed["job"]["status"] == "completed"
    assert resumed["job"]["resumed"], "a resumed job records when it was resumed"
    statuses = {name: s["status"] for name, s in resumed["stages"].items()}
    assert statuses == {
        "samples": "cached", "split": "cached", "train": "completed",
        "evaluate": "completed", "preview": "completed", "export": "completed",
        "report": "completed",
    }  # fmt: skip
    assert resumed["stages"]["train"]["resumed_after_epoch"] == 1
    assert not checkpoint.exists(), "the checkpoint goes once the trained model is saved"
    fresh = output_of(run_job(tiny_config(*settings)))
    assert "resumed_after_epoch" not in fresh["stages"]["train"]
    assert resumed["history"] == fresh["history"]
    assert resumed["metrics"] == fresh["metrics"]

    again = output_of(run_job(tiny_config(*settings, f"job.id={bucket.name}")))
    assert {s["status"] for s in again["stages"].values()} == {"cached"}
    assert again["metrics"] == resumed["metrics"]


@pytest.fixture
def folder_with_corrupt_jpegs(tmp_path: Path) -> tuple[Path, list[str]]:
    """A folder dataset whose 8 circle JPEGs are corrupt (they land in train and devel)."""
    import shutil

    folder = ShapesDataset(samples_per_class=16, image_size=32, cache_dir=str(tmp_path / "src"))
    data = tmp_path / "data"
    shutil.copytree(folder.generate(), data)
    corrupt = sorted((data / "circle").glob("*.jpg"))
    for i, image in enumerate(corrupt):  # a JPEG start marker, then distinct garbage
        image.write_bytes(b"\xff\xd8\xff\xe0" + f"truncated {i}".encode())
    return data, [str(p) for p in corrupt]


def test_corrupt_jpeg_raise_names_the_files(tiny_config, folder_with_corrupt_jpegs) -> None:
    data, corrupt = folder_with_corrupt_jpegs
    cfg = tiny_config("dataset=folder", f"dataset.url={data}", "tracking=none")
    with pytest.raises(DataError, match="8 image.s. cannot be decoded") as raised:
        run_job(cfg)
    assert corrupt[0] in str(raised.value)
    assert "loader.on_error=skip" in str(raised.value)


def test_corrupt_jpeg_skip_is_counted_once(tiny_config, folder_with_corrupt_jpegs) -> None:
    data, corrupt = folder_with_corrupt_jpegs
    cfg = tiny_config("dataset=folder", f"dataset.url={data}", "tracking=none",
                      "loader.on_error=skip", "split.fractions.devel=0.5")  # fmt: skip
    job = run_job(cfg)
    output = output_of(job)
    split = pd.read_csv(
        io.BytesIO(storage.read_bytes(job.bucket.artifact("sample_identification.csv")))
    )
    purposes = set(split.loc[split["path"].isin(corrupt), "purpose"])
    assert purposes == {"train", "devel"}, "the corrupt files should fall in both splits"
    assert output["job"]["status"] == "completed"
    assert output["samples"]["skipped"] == 8
    assert output["samples"]["skipped_urls"] == corrupt


def test_dataset_and_job_bucket_on_s3(tiny_config, tmp_path: Path, s3_bucket: str) -> None:
    folder = ShapesDataset(samples_per_class=16, image_size=32, cache_dir=str(tmp_path / "src"))
    storage.upload(folder.generate(), f"{s3_bucket}/data")
    job = run_job(tiny_config("dataset=folder", f"dataset.url={s3_bucket}/data",
                              f"job.root={s3_bucket}/jobs"))  # fmt: skip
    output = output_of(job)
    assert job.bucket_url.startswith(f"{s3_bucket}/jobs/")
    assert output["job"]["status"] == "completed"
    assert storage.exists(storage.join(job.bucket_url, "info.json"))
    assert storage.exists(job.bucket.artifact("model", "saved_model.tar.gz"))
    client = MlflowClient(tracking_uri=output["mlflow"]["tracking_uri"])
    assert client.get_run(output["mlflow"]["run_id"]).info.status == "FINISHED"


def test_cli_run_prints_job_and_ctrl_c_marks_it_stopped(tmp_path: Path) -> None:
    # the process ends without the interpreter's teardown (cli.console_main): its buffered
    # output still arrives whole and its exit handlers still clean its temporary files
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    args = [sys.executable, "-m", "brevpipe", "run", *tiny_overrides(tmp_path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env={**env, "TMPDIR": str(temp)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "completed" in done.stdout and "bucket:" in done.stdout and "mlflow:" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("  devel/"), "the last line too"
    assert not [n for n in NOTICES if n in done.stderr], "TensorFlow's start-up chatter"
    assert not list(temp.iterdir()), "AutoGraph's and brevpipe's temporary files removed"
    env["PYTHONUNBUFFERED"] = "1"

    slow = [*args, "trainer.epochs=200", "tracking=none", f"job.root={tmp_path / 'stopped'}"]
    proc = subprocess.Popen(
        slow, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    deadline = time.monotonic() + 240
    for line in proc.stdout:  # wait until training runs
        if line.startswith("Epoch 2/") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    (bucket,) = (tmp_path / "stopped").iterdir()
    output = json.loads((bucket / "artifacts" / "output.json").read_text())
    assert output["job"]["status"] == "stopped"
    assert output["stages"]["train"]["status"] == "stopped"  # the stage ends with the job
    assert output["job"]["error"] == "stopped by the user (interrupt)"
