"""The MLflow mirror against real stores: an ``mlflow server`` subprocess, an unreachable
server, the model in MLflow's format, and sweeps (grid, Optuna, joblib, Ray) as parent and
nested child runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from brevpipe.engine.runner import run_job
from brevpipe.io import storage
from tests.conftest import free_port, tiny_overrides

pytestmark = pytest.mark.slow


def test_job_mirrored_into_an_mlflow_server(tiny_config, mlflow_server: str, tmp_path) -> None:
    import keras
    import mlflow.pyfunc

    job = run_job(tiny_config("seed=3", f"tracking.uri={mlflow_server}"))
    output = storage.read_json(job.output_url)
    assert output["mlflow"]["tracking_uri"] == mlflow_server
    assert "error" not in output["mlflow"]

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(output["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["brevpipe.job_id"] == job.id
    assert run.data.tags["brevpipe.bucket"] == job.bucket_url
    assert run.data.tags["brevpipe.pipeline"] == "classification"
    assert run.data.params["trainer.epochs"] == "2"
    assert run.data.params["pipeline.stages.train.model.filters"] == "[8, 16]"
    for name, value in output["metrics"].items():
        assert run.data.metrics[name] == pytest.approx(value)
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx([h["loss"] for h in output["history"]])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"output.json", "predictions.csv", "sample_identification.csv", "model",
            "mlflow_model", "mlflow_model_arrays"} <= artifacts  # fmt: skip
    model_files = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert "model/saved_model.tar.gz" in model_files

    # the array-in model predicts what the exported Keras model predicts; the image-in model
    # (output.json's model_uri) what the job's evaluation predicted for the same files
    images = np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)).astype(np.float32)
    assert output["mlflow"]["model_uri"] == f"runs:/{run.info.run_id}/mlflow_model"
    mlflow.set_tracking_uri(mlflow_server)
    try:
        arrays = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/mlflow_model_arrays")
        by_image = mlflow.pyfunc.load_model(output["mlflow"]["model_uri"])
    finally:
        mlflow.set_tracking_uri(None)
    exported = keras.models.load_model(Path(job.bucket.artifact("model", "model.keras")))
    np.testing.assert_allclose(np.asarray(arrays.predict(images)), exported.predict(images),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    evaluated = pd.read_csv(job.bucket.artifact("predictions.csv")).head(6)
    files = pd.DataFrame({"image": [Path(p).read_bytes() for p in evaluated["path"]]})
    scored = by_image.predict(files)
    assert scored["predicted"].tolist() == evaluated["predicted"].tolist()
    columns = [c for c in evaluated if c.startswith("score_")]
    np.testing.assert_allclose(scored[columns].to_numpy(), evaluated[columns].to_numpy(),
                               atol=1e-6)  # fmt: skip


def test_unreachable_mlflow_warns_once_and_the_job_completes(tiny_config, caplog) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    job = run_job(tiny_config(f"tracking.uri={dead}"))
    output = storage.read_json(job.output_url)
    assert output["job"]["status"] == "completed"
    assert output["mlflow"]["pending"] == ["run"], "what is not mirrored"
    assert "Connection refused" in output["mlflow"]["error"]
    assert storage.exists(job.bucket.artifact("model", "model.keras"))
    warnings = [r for r in caplog.records if "MLflow mirror" in r.getMessage()]
    assert len(warnings) == 1


def sweep(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "brevpipe", "run", "-m", *tiny_overrides(tmp_path), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def outputs_under(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in root.glob("*/artifacts/output.json")]


def parent_and_children(tmp_path: Path) -> tuple:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("classification")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("brevpipe.sweep") == "true"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, children


def test_grid_sweep_gives_job_buckets_and_nested_runs(tmp_path: Path) -> None:
    sweep(tmp_path, "trainer.lr=0.01,0.003", "seed=1,2")
    outputs = outputs_under(tmp_path / "jobs")
    assert len(outputs) == 4 and len({o["job"]["id"] for o in outputs}) == 4
    assert sorted((o["config"]["trainer"]["lr"], o["seed"]) for o in outputs) == [
        (0.003, 1), (0.003, 2), (0.01, 1), (0.01, 2)
    ]  # fmt: skip
    assert {o["job"]["status"] for o in outputs} == {"completed"}

    client, parent, children = parent_and_children(tmp_path)
    assert len(children) == 4
    assert {c.data.tags["brevpipe.job_id"] for c in children} == {o["job"]["id"] for o in outputs}
    assert {o["mlflow"]["run_id"] for o in outputs} == {c.info.run_id for c in children}
    assert parent.info.status == "FINISHED"
    best = max(outputs, key=lambda o: o["metrics"]["devel/accuracy"])["metrics"]["devel/accuracy"]
    assert parent.data.metrics["best/devel/accuracy"] == pytest.approx(best)
    summary_file = client.download_artifacts(
        parent.info.run_id, "sweep_summary.json", str(tmp_path)
    )
    summary = json.loads(Path(summary_file).read_text())
    assert summary["children"] == 4 and summary["best_value"] == pytest.approx(best)
    assert {"sweep_children.csv", "sweep_summary.json"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }


def test_optuna_sweep_three_trials(tmp_path: Path) -> None:
    done = sweep(tmp_path, "search=lr_dense", "hydra.sweeper.n_trials=3")
    outputs = outputs_under(tmp_path / "jobs")
    assert len(outputs) == 3
    learning_rates = {o["config"]["trainer"]["lr"] for o in outputs}
    assert len(learning_rates) == 3 and all(1e-4 <= lr <= 1e-2 for lr in learning_rates)
    assert "best value" in done.stdout + done.stderr
    best = max(o["metrics"]["devel/accuracy"] for o in outputs)
    _, parent, children = parent_and_children(tmp_path)
    assert len(children) == 3
    assert parent.data.metrics["best/devel/accuracy"] == pytest.approx(best)


def test_joblib_launcher_two_workers(tmp_path: Path) -> None:
    """With tracking.register, only the sweep's best trial is registered, at the sweep's end."""
    sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=1,2",
          "tracking.register=swept")  # fmt: skip
    outputs = outputs_under(tmp_path / "jobs")
    assert sorted(o["seed"] for o in outputs) == [1, 2]
    assert {o["job"]["status"] for o in outputs} == {"completed"}
    client, parent, children = parent_and_children(tmp_path)
    assert len(children) == 2 and parent.info.status == "FINISHED"
    best = parent.data.tags["brevpipe.best_job_id"]
    [version] = client.search_model_versions("name='swept'")
    assert version.tags["brevpipe.job_id"] == best and parent.data.tags["brevpipe.registered"] \
        == f"models:/swept/{version.version}"  # fmt: skip
    registry = {o["job"]["id"]: o["mlflow"]["registry"] for o in outputs}
    assert registry[best]["version"] == int(version.version)
    assert [r for job, r in registry.items() if job != best] == [{"name": "swept",
                                                                  "deferred": "sweep"}]


@pytest.mark.ray
@pytest.mark.xdist_group("ray")  # never beside tests/test_ray_cluster.py's cluster (2 cores)
def test_ray_launcher_local_ray(tmp_path: Path) -> None:
    sweep(tmp_path, "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
          "+hydra.launcher.ray.init.include_dashboard=false", "seed=1,2")  # fmt: skip
    outputs = outputs_under(tmp_path / "jobs")
    assert sorted(o["seed"] for o in outputs) == [1, 2]
    assert {o["job"]["status"] for o in outputs} == {"completed"}
    _, parent, children = parent_and_children(tmp_path)
    assert len(children) == 2


@pytest.mark.parametrize(("direction", "best"), [("minimize", 0.2), ("maximize", 0.9)])
def test_a_sweeps_summary_picks_its_best_trial_by_direction(
    tmp_path: Path, direction: str, best: float
) -> None:
    """sweep.direction=minimize ranks a loss the other way round (a real sqlite store)."""
    from brevpipe.integrations.sweep_summary import summarize

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("sweep")
    parent = client.create_run(experiment).info.run_id
    for job, value in (("a", 0.5), ("b", 0.2), ("c", 0.9)):
        child = client.create_run(experiment, tags={"mlflow.parentRunId": parent,
                                                    "brevpipe.job_id": job}).info.run_id
        client.log_metric(child, "devel/loss", value)
        client.set_terminated(child, "FINISHED")
    summary = summarize({"tracking_uri": uri, "run_id": parent, "experiment_id": experiment,
                         "objective": "devel/loss", "direction": direction})  # fmt: skip
    assert summary["best_value"] == best and summary["scored"] == 3
    assert client.get_run(parent).data.metrics["best/devel/loss"] == best
