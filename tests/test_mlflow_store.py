"""A new sqlite MLflow store is a copy of an empty one made once per MLflow version: MLflow's
migrations run once, the copies are whole working stores, and a bad empty store in the cache
folder costs only the time MLflow takes to create the store itself."""

from __future__ import annotations

from pathlib import Path

import mlflow.store.db.utils
import pytest

from brevpipe.integrations import mlflow_store


@pytest.fixture
def migrations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Each time MLflow creates a store's tables (it still does); the user cache in tmp_path."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    calls: list[str] = []
    create = mlflow.store.db.utils._initialize_tables

    def recorded(engine):
        calls.append(str(engine.url))
        return create(engine)

    monkeypatch.setattr(mlflow.store.db.utils, "_initialize_tables", recorded)
    return calls


def a_run_in(uri: str) -> dict[str, float]:
    """Log a metric to a new run of an experiment of the store; read it back."""
    client = mlflow_store.open_client(uri)
    experiment = mlflow_store.ensure_experiment(client, "classification", uri)
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "devel/accuracy", 0.9, step=1)
    client.set_terminated(run.info.run_id)
    return client.get_run(run.info.run_id).data.metrics


def test_new_stores_are_copies_of_one_empty_store(migrations: list[str], tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "mlflow.db", tmp_path / "b" / "mlflow.db"
    assert a_run_in(f"sqlite:///{first}") == {"devel/accuracy": 0.9}
    assert len(migrations) == 1, "the empty store, made once"
    assert list((tmp_path / "cache" / "brevpipe" / "mlflow").glob("empty-store-*.db"))
    assert a_run_in(f"sqlite:///{second}") == {"devel/accuracy": 0.9}
    assert len(migrations) == 1, "the second store is a copy"
    client = mlflow_store.open_client(f"sqlite:///{second}")
    beside = (tmp_path / "b" / "mlartifacts" / "0").as_uri()
    assert client.get_experiment("0").artifact_location == beside, "beside the store"
    assert [e.name for e in client.search_experiments()] == ["classification", "Default"]
    assert not list(tmp_path.glob("*/*.tmp-*")), "nothing half-written"


def test_a_bad_empty_store_in_the_cache_leaves_the_store_to_mlflow(
    migrations: list[str], tmp_path: Path
) -> None:
    import mlflow

    planted = tmp_path / "cache" / "brevpipe" / "mlflow" / f"empty-store-{mlflow.__version__}.db"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"not a database")
    store = tmp_path / "jobs" / "mlflow.db"
    assert a_run_in(f"sqlite:///{store}") == {"devel/accuracy": 0.9}
    assert migrations == [f"sqlite:///{store}"], "MLflow made the store itself"
    assert not list(store.parent.glob("*.tmp-*"))


def test_an_mlflow_model_is_saved_without_mlflows_check_of_this_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model's requirements are this process's own versions: MLflow's check that this
    environment satisfies them (0.7 s per process) is skipped while saving, and only then."""
    import io
    import json
    import tarfile

    import mlflow.utils.environment

    from brevpipe.serving.mlflow_model import IMAGES, requirements, save_models

    checked: list[list[str]] = []
    monkeypatch.setattr(mlflow.utils.environment, "warn_dependency_requirement_mismatches",
                        checked.append)  # fmt: skip
    archive = tmp_path / "saved_model.tar.gz"
    metadata = json.dumps({"classes": ["a", "b"], "input_shape": [8, 8, 3]}).encode()
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("model.json")
        info.size = len(metadata)
        tar.addfile(info, io.BytesIO(metadata))
    saved = save_models(archive, tmp_path)
    assert (saved[IMAGES] / "requirements.txt").read_text().split() == requirements()
    assert checked == [], "skipped while saving"
    mlflow.utils.environment.warn_dependency_requirement_mismatches(["x==1"])
    assert checked == [["x==1"]], "and in place again afterwards"
