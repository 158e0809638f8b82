"""The model lifecycle in MLflow's registry: register on export, promote behind gates,
predict and serve through aliases (brevpipe's own and ``mlflow models serve``), test reports."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from brevpipe.commands import models
from brevpipe.engine.runner import run_job
from brevpipe.errors import DataError
from brevpipe.io import storage
from tests.conftest import compose_config, free_port, tiny_overrides

# one test process runs the module: its registry (two trained versions) is made once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("registry")]


def train(folder: Path, *extra: str) -> dict:
    """A tiny job registered as ``parts``; its output.json."""
    job = run_job(compose_config([*tiny_overrides(folder), "tracking.register=parts", *extra]))
    return storage.read_json(job.output_url)


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()  # what jobs before printed
    code = models.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def scores(table: pd.DataFrame) -> np.ndarray:
    return table[[c for c in table if c.startswith("score_")]].to_numpy(float)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> dict:
    """Two registered versions of ``parts`` in a real ``mlflow server``: a trained one (tagged)
    and one barely trained (a learning rate of 1e-9)."""
    folder = tmp_path_factory.mktemp("registry")
    tracking = f"tracking.uri={mlflow_server}"
    first = train(folder, "trainer.epochs=4", "job.tags=[line3]", tracking)
    second = train(folder, "trainer.epochs=1", "trainer.lr=1e-9", "seed=9", tracking)
    return {"folder": folder, "uri": mlflow_server, "first": first, "second": second,
            "root": str(folder / "jobs")}  # fmt: skip


def test_each_job_registers_a_version_tagged_with_its_lineage(store: dict) -> None:
    client = MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])
    first, second = store["first"], store["second"]
    assert first["mlflow"]["registry"] == {"name": "parts", "version": 1, "alias": "candidate",
                                           "uri": "models:/parts/1"}  # fmt: skip
    assert second["mlflow"]["registry"]["version"] == 2
    version = client.get_model_version("parts", "1")
    assert version.run_id == first["mlflow"]["run_id"]
    assert version.tags["brevpipe.job_id"] == first["job"]["id"]
    assert version.tags["brevpipe.dataset"] == first["dataset"]["digest"]
    assert version.tags["brevpipe.tags"] == "line3"
    assert float(version.tags["brevpipe.key_metric_value"]) == first["metrics"]["devel/accuracy"]
    aliases = client.get_registered_model("parts").aliases  # str over REST, int from sqlite
    assert {k: int(v) for k, v in aliases.items()} == {"candidate": 2}
    run = client.get_run(first["mlflow"]["run_id"])  # the run's dataset input: the same digest
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [first["dataset"]["digest"]]


def test_bad_requests_get_one_line_and_move_nothing(store: dict, tmp_path: Path,
                                                    capsys) -> None:  # fmt: skip
    client = MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])
    before = client.get_registered_model("parts")
    uri = ["--tracking-uri", store["uri"]]
    dead = f"http://127.0.0.1:{free_port()}"
    for argv, message in [
        (["promote", "nope", "--alias", "champion"], "no registered model 'nope'"),
        (["promote", "parts", "@gone", "--alias", "champion"], "has no version @gone"),
        (["promote", "parts", "9", "--alias", "champion"], "has no version 9"),
        (["promote", "parts", "1", "--alias", "champion", "--require", "devel/f2>=0.5"],
         "refused: version 1 has no metric 'devel/f2'"),
        (["promote", "parts", "1", "--alias", "champion", "--require", "devel/accuracy>=1.01"],
         "refused: version 1 has devel/accuracy"),
        (["promote", "parts", "1", "--alias", "champion", "--require", "accuracy=>x"],
         "write METRIC>=NUMBER"),
        (["promote", "parts", "1", "--alias", "v3"], "is not an alias"),
        (["show", "../etc"], "is not a model name"),
    ]:
        code, out, err = cli(capsys, *argv, *uri)
        assert code == 1 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    code, _, err = cli(capsys, "list", "--tracking-uri", dead)
    assert code == 1 and "does not answer" in err and "start the server" in err
    code, _, err = cli(capsys, "list", "--tracking-uri", f"file://{tmp_path}/mlruns")
    assert code == 1 and "file store, which has no model registry" in err
    assert not (tmp_path / "mlruns").exists()
    after = client.get_registered_model("parts")
    assert (after.aliases, after.tags) == (before.aliases, before.tags)  # nothing moved, no log


def test_a_test_report_equals_predict_and_sklearn_and_is_listed(store: dict, tmp_path: Path,
                                                                capsys) -> None:  # fmt: skip
    from sklearn.metrics import accuracy_score, f1_score

    from brevpipe.serving.resolve import resolve_model

    overrides = [*tiny_overrides(store["folder"]), "pipeline=test",
                 "test.model=models:/parts/1", "dataset.seed=11", "dataset.samples_per_class=6",
                 f"dataset.cache_dir={tmp_path / 'other'}", "job.tags=[night-shift]",
                 f"tracking.uri={store['uri']}"]  # fmt: skip
    job = run_job(compose_config(overrides))
    output = storage.read_json(job.output_url)
    tested = output["tested_model"]
    assert (tested["name"], tested["version"]) == ("parts", 1)
    assert tested["job_id"] == store["first"]["job"]["id"]
    assert tested["archive_sha256"] == store["first"]["model"]["archive_sha256"]
    assert "train" not in output["stages"] and output["history"] == []

    predictions = pd.read_csv(job.bucket.artifact("predictions.csv"))
    predicted = resolve_model("models:/parts/1", tracking_uri=store["uri"]).predict_urls(
        predictions["path"].tolist())  # fmt: skip
    np.testing.assert_allclose(scores(predicted), scores(predictions), atol=1e-6)
    metrics = output["metrics"]
    assert metrics["test/accuracy"] == pytest.approx(
        accuracy_score(predictions["true"], predicted["predicted"]))
    assert metrics["test/macro_f1"] == pytest.approx(
        f1_score(predictions["true"], predicted["predicted"], average="macro", zero_division=0))

    code, out, _ = cli(capsys, "show", "parts", "--tracking-uri", store["uri"], "--format", "json")
    assert code == 0
    [report] = json.loads(out)["versions"][0]["test_reports"]
    assert report["job_id"] == job.id and report["tags"] == ["night-shift"]
    assert report["metrics"]["test/accuracy"] == metrics["test/accuracy"]
    assert report["run_id"] == output["mlflow"]["run_id"]


def test_a_dataset_with_classes_the_model_lacks_is_refused(store: dict, tmp_path: Path) -> None:
    from PIL import Image

    for name in ("circle", "hexagon"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("RGB", (32, 32), "red").save(tmp_path / "data" / name / "a.png")
    overrides = [*tiny_overrides(store["folder"], shapes=False), "pipeline=test",
                 "test.model=models:/parts/1", "dataset=folder",
                 f"dataset.url={tmp_path / 'data'}", f"tracking.uri={store['uri']}"]  # fmt: skip
    with pytest.raises(DataError, match=r"the dataset's classes \['hexagon'\] are not the model's"):
        run_job(compose_config(overrides))


def test_registration_failing_at_export_completes_the_job_and_is_retried(
    tmp_path: Path, capsys, caplog
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    output = train(tmp_path, "trainer.epochs=1", f"tracking.uri={dead}")
    assert output["job"]["status"] == "completed"
    assert output["mlflow"]["registry"]["name"] == "parts"
    assert output["mlflow"]["registry"]["error"] and "version" not in output["mlflow"]["registry"]
    hint = f"brevpipe models register {output['job']['id']} --root {tmp_path / 'jobs'} " \
           f"--tracking-uri {dead}"  # fmt: skip
    assert hint in caplog.text

    uri = f"sqlite:///{tmp_path / 'later.db'}"
    job_id, root = output["job"]["id"], str(tmp_path / "jobs")
    for _ in range(2):  # a retry twice registers once
        code, out, err = cli(capsys, "register", job_id[:8], "--root", root, "--tracking-uri", uri)
        assert code == 0, err
        assert "registered as parts version 1 (@candidate" in out
    after = json.loads((tmp_path / "jobs" / job_id / "artifacts" / "output.json").read_text())
    assert after["mlflow"]["registry"]["version"] == 1 and "pending" not in after["mlflow"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert len(client.search_model_versions("name='parts'")) == 1


def test_registering_again_moves_no_alias_and_a_job_without_a_model_is_refused(
    store: dict, capsys
) -> None:
    client = MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])
    first = store["first"]["job"]["id"]
    before = client.get_registered_model("parts").aliases
    code, out, err = cli(capsys, "register", first, "--root", store["root"], "--tracking-uri",
                         store["uri"])  # fmt: skip
    assert code == 0 and "registered as parts version 1 " in out, err
    assert client.get_registered_model("parts").aliases == before  # candidate stays on 2
    # a test job (no export) with tracking.register: the job completes, nothing is registered
    output = train(store["folder"], "pipeline=test", "test.model=models:/parts/2",
                   "dataset.samples_per_class=4", f"tracking.uri={store['uri']}")  # fmt: skip
    assert output["job"]["status"] == "completed"
    assert "has no exported model" in output["mlflow"]["registry"]["error"]
    assert len(client.search_model_versions("name='parts'")) == 2
    code, _, err = cli(capsys, "show", "parts'--", "--tracking-uri", store["uri"])
    assert code == 1 and "is not a model name" in err


def serve_mlflow_model(model_uri: str, tracking_uri: str, log: Path) -> tuple[subprocess.Popen,
                                                                                str]:  # fmt: skip
    """``mlflow models serve`` of ``model_uri`` on a free port, once it answers."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        # MLflow starts uvicorn by name: the venv's bin first, as an activated venv has it
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri,
             "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).raise_for_status()
            return server, f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("mlflow models serve did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.5)


@pytest.mark.timeout(600)
def test_train_promote_predict_and_serve_through_an_mlflow_server(
    store: dict, tmp_path: Path, capsys
) -> None:
    """The issue's end-to-end path on a real ``mlflow server``: two registered versions, a
    promotion through a gate, brevpipe predict and ``mlflow models serve`` through the alias
    (the same scores as the job's predictions.csv), the worse version refused, a moved alias
    followed by brevpipe's service."""
    from brevpipe.serving.reload import AliasWatcher
    from brevpipe.serving.resolve import resolve_model
    from brevpipe.serving.service import ModelService

    started = time.monotonic()
    mlflow_server = store["uri"]
    uri = ["--tracking-uri", mlflow_server]
    good, worse = store["first"], store["second"]
    versions = {good["mlflow"]["registry"]["version"]: good,
                worse["mlflow"]["registry"]["version"]: worse}
    assert sorted(versions) == [1, 2]
    # the better of the two becomes champion through a gate; the other is then refused by
    # --than champion (a tie is refused too: it is not better)
    better, other = sorted(versions, key=lambda v: -versions[v]["metrics"]["devel/accuracy"])
    code, out, err = cli(capsys, "promote", "parts", str(better), "--alias", "champion",
                         "--require", "devel/accuracy>=0", "--by", "tester", *uri)  # fmt: skip
    assert code == 0 and f"moved from version (none) to {better}" in out, err
    code, out, err = cli(capsys, "promote", "parts", str(other), "--alias", "champion",
                         "--than", "champion", *uri)  # fmt: skip
    assert code == 1 and "not better than version" in err and "alias champion not moved" in err
    code, out, err = cli(capsys, "promote", "parts", str(other), "--alias", "challenger", *uri)
    assert code == 0

    champion = versions[better]
    predictions = pd.read_csv(Path(champion["job"]["bucket"]) / "artifacts" / "predictions.csv")
    files = predictions["path"].tolist()
    predicted = subprocess.run(
        [sys.executable, "-m", "brevpipe", "predict", "models:/parts@champion", *files, *uri],
        capture_output=True, text=True, check=True).stdout  # fmt: skip
    by_brevpipe = pd.read_csv(io.StringIO(predicted))
    assert by_brevpipe["predicted"].tolist() == predictions["predicted"].tolist()
    np.testing.assert_allclose(scores(by_brevpipe), scores(predictions), atol=1e-6)

    server, url = serve_mlflow_model("models:/parts@champion", mlflow_server, tmp_path / "s.log")
    try:
        images = [base64.b64encode(Path(p).read_bytes()).decode() for p in files]
        answer = httpx.post(f"{url}/invocations", timeout=60, json={
            "dataframe_split": {"columns": ["image"], "data": [[i] for i in images]}})
        assert answer.status_code == 200, answer.text
        by_mlflow = pd.DataFrame(answer.json()["predictions"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert by_mlflow["predicted"].tolist() == predictions["predicted"].tolist()
    difference = float(np.abs(scores(by_mlflow) - scores(predictions)).max())
    assert difference <= 1e-6
    with capsys.disabled():  # the figures of the acceptance, in the test log
        print(f"\nmax score difference, brevpipe predict vs mlflow models serve: "
              f"{difference:.2e} (after {time.monotonic() - started:.0f} s)")

    code, out, _ = cli(capsys, "show", "parts", *uri)
    assert code == 0
    with capsys.disabled():
        print(out)
    for text in ("@champion", "@challenger", "@candidate", "tester", "devel/accuracy>=0"):
        assert text in out
    code, out, _ = cli(capsys, "show", "parts", *uri, "--format", "json")
    shown = json.loads(out)
    assert len(shown["versions"]) == 2 and len(shown["promotions"]) == 2
    assert [(p["alias"], p["to"]) for p in shown["promotions"]] == [("champion", better),
                                                                    ("challenger", other)]

    # brevpipe's service follows a moved alias
    predictor = resolve_model("models:/parts@champion", tracking_uri=mlflow_server)
    assert predictor.source == {"model": "models:/parts@champion", "name": "parts",
                                "version": better, "alias": "champion",
                                "run_id": champion["mlflow"]["run_id"]}  # fmt: skip
    service = ModelService(predictor, task_threads=1)
    watcher = AliasWatcher(service, "models:/parts@champion", 1, "./jobs", mlflow_server)
    assert watcher.check() is False
    code, _, err = cli(capsys, "promote", "parts", str(other), "--alias", "champion", *uri)
    assert code == 0, err  # no gate: moved (a rollback, say), and logged
    assert watcher.check() is True and service.predictor.source["version"] == other
    served = service.predict([("a.png", Path(files[0]).read_bytes())])[0]["scores"]
    expected = resolve_model(f"models:/parts/{other}", tracking_uri=mlflow_server)
    np.testing.assert_allclose(list(served.values()),
                               scores(expected.predict_urls(files[:1]))[0], atol=1e-6)
    service.close()
