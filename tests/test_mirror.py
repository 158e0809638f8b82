"""The MLflow mirror converges: jobs started together on a new store, a server that goes away
mid-job, and ``brevpipe jobs sync`` replaying a bucket whose mirror failed, idempotently.
Real stores only: sqlite files and ``mlflow server`` subprocesses."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from brevpipe.commands import jobs
from brevpipe.engine.runner import run_job
from brevpipe.io import storage
from tests.conftest import free_port, start_mlflow_server, tiny_overrides

# one test process for the module: its MLflow server and its unmirrored job are made once
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mirror")]


def history_of(client: MlflowClient, run_id: str, output: dict[str, Any]) -> dict[str, list]:
    """Every metric's points in the run, as ``{name: [(step, value), ...]}`` sorted by step."""
    names = {k for row in output["history"] for k in row if k != "epoch"} | set(output["metrics"])
    return {name: sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
            for name in sorted(names)}  # fmt: skip


def expected_history(output: dict[str, Any]) -> dict[str, list]:
    """What the run must hold: each epoch's logs at its step, the final metrics at step 0."""
    points: dict[str, list] = {}
    for row in output["history"]:
        for name, value in row.items():
            if name != "epoch":
                points.setdefault(name, []).append((row["epoch"], value))
    for name, value in output["metrics"].items():
        points.setdefault(name, []).append((0, value))
    return {name: sorted(p) for name, p in sorted(points.items())}


def assert_mirrored(client: MlflowClient, output: dict[str, Any]) -> None:
    """The run of ``output`` is FINISHED and holds exactly the job's history and metrics."""
    run = client.get_run(output["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["brevpipe.job_id"] == output["job"]["id"]
    assert history_of(client, run.info.run_id, output) == expected_history(output)


def runs_of(client: MlflowClient) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def cli(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = jobs.main(list(args))
    out, err = capsys.readouterr()
    return code, out + err


def start_jobs(tmp_path: Path, count: int, *extra: str) -> list[subprocess.Popen]:
    """``count`` ``brevpipe run`` processes started at once, each with its own seed."""
    repo = str(Path(__file__).resolve().parents[1])  # tests.helpers, for trainer.callbacks
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": repo}
    return [subprocess.Popen(
        [sys.executable, "-m", "brevpipe", "run", *tiny_overrides(tmp_path), f"seed={seed}",
         "runtime.verbose=2", *extra],
        cwd=tmp_path, env=env, stdout=(tmp_path / f"job{seed}.log").open("w"),
        stderr=subprocess.STDOUT,
    ) for seed in range(1, count + 1)]  # fmt: skip


def wait_jobs(tmp_path: Path, processes: list[subprocess.Popen]) -> list[dict[str, Any]]:
    codes = [p.wait(timeout=600) for p in processes]
    logs = [(tmp_path / f"job{i}.log").read_text() for i in range(1, len(processes) + 1)]
    assert codes == [0] * len(processes), "\n\n".join(log[-3000:] for log in logs)
    outputs = [json.loads(p.read_text())
               for p in sorted((tmp_path / "jobs").glob("*/artifacts/output.json"))]  # fmt: skip
    assert len(outputs) == len(processes)
    return outputs


@pytest.mark.timeout(900)
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_three_jobs_started_at_once_all_have_their_whole_run(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """Three jobs at once on one new sqlite store raced MLflow's schema creation (two of three
    runs were missing); on a server they share one store. Every run exists, FINISHED, whole."""
    uri = (f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}" if store == "sqlite"
           else request.getfixturevalue("mlflow_server"))  # fmt: skip
    outputs = wait_jobs(tmp_path, start_jobs(tmp_path, 3, f"tracking.uri={uri}",
                                             "tracking.experiment=together"))  # fmt: skip
    client = MlflowClient(tracking_uri=uri)
    for output in outputs:
        assert output["job"]["status"] == "completed"
        assert "pending" not in output["mlflow"] and "error" not in output["mlflow"]
        assert_mirrored(client, output)
    runs = client.search_runs([client.get_experiment_by_name("together").experiment_id])
    assert sorted(r.data.tags["brevpipe.job_id"] for r in runs) == \
        sorted(o["job"]["id"] for o in outputs), "one run per job, none twice"  # fmt: skip


@pytest.fixture(scope="module")
def unmirrored_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A job whose MLflow server never answered: it completed, its mirror is pending."""
    from tests.conftest import compose_config

    tmp_path = tmp_path_factory.mktemp("unmirrored")
    dead = f"http://127.0.0.1:{free_port()}"
    job = run_job(compose_config([*tiny_overrides(tmp_path), f"tracking.uri={dead}"]))
    return tmp_path / "jobs", storage.read_json(job.output_url)


def test_jobs_sync_replays_a_job_whose_mirror_failed(
    unmirrored_job: tuple[Path, dict[str, Any]], mlflow_server: str,
    capsys: pytest.CaptureFixture,
) -> None:  # fmt: skip
    root, output = unmirrored_job
    job_id = output["job"]["id"]
    assert output["job"]["status"] == "completed" and output["mlflow"]["pending"] == ["run"]
    code, listing = cli("list", "--root", str(root), capsys=capsys)
    assert code == 0 and "completed+" in listing and "jobs sync" in listing

    # the store output.json names is a server: brevpipe sends a job only where the user says
    code, text = cli("sync", job_id, "--root", str(root), capsys=capsys)
    assert code == 1 and f"add --tracking-uri {output['mlflow']['tracking_uri']}" in text

    code, text = cli("sync", job_id, "--root", str(root), "--tracking-uri", mlflow_server,
                     capsys=capsys)  # fmt: skip
    assert code == 0, text
    assert "(new)" in text and "metric points" in text and "model" in text
    synced = json.loads((root / job_id / "artifacts" / "output.json").read_text())
    assert "pending" not in synced["mlflow"] and synced["mlflow"]["tracking_uri"] == mlflow_server
    client = MlflowClient(tracking_uri=mlflow_server)
    assert_mirrored(client, synced)
    run = client.get_run(synced["mlflow"]["run_id"])
    assert run.data.params["trainer.epochs"] == "2"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"output.json", "predictions.csv", "model", "mlflow_model"} <= artifacts
    points = sum(len(v) for v in history_of(client, run.info.run_id, synced).values())
    code, listing = cli("list", "--root", str(root), capsys=capsys)
    assert "completed+" not in listing

    # twice, and --all: nothing new (no second run, no point twice)
    for args in ((job_id,), ("--all",)):
        code, text = cli("sync", *args, "--root", str(root), "--tracking-uri", mlflow_server,
                         capsys=capsys)  # fmt: skip
        assert code == 0 and "already complete" in text, text
    same = [r for r in runs_of(client) if r.data.tags.get("brevpipe.job_id") == job_id]
    assert [r.info.run_id for r in same] == [run.info.run_id]
    assert sum(len(v) for v in history_of(client, run.info.run_id, synced).values()) == points


def test_jobs_sync_reads_a_planted_output_json_as_untrusted(
    unmirrored_job: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A bucket's output.json names a model outside the bucket and a store to create
    anywhere; another names an id made to break out of MLflow's filter syntax."""
    root, output = unmirrored_job
    planted = tmp_path / "root"
    shutil.copytree(root / output["job"]["id"], planted / output["job"]["id"])
    secret = tmp_path / "secret.tar.gz"
    secret.write_bytes(b"not yours")
    store = tmp_path / "elsewhere" / "mlflow.db"
    file = planted / output["job"]["id"] / "artifacts" / "output.json"
    file.write_text(json.dumps({**output, "model": {"archive_url": str(secret)},
                                "mlflow": {"tracking_uri": f"sqlite:///{store}"}}))  # fmt: skip
    code, text = cli("sync", "--all", "--root", str(planted), capsys=capsys)
    assert code == 1 and "add --tracking-uri" in text and not store.parent.exists()

    uri = f"sqlite:///{tmp_path / 'mine.db'}"
    code, text = cli("sync", "--all", "--root", str(planted), "--tracking-uri", uri,
                     capsys=capsys)  # fmt: skip
    assert code == 0 and "is not in the job's bucket: not mirrored" in text, text
    run_id = json.loads(file.read_text())["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=uri)
    assert "mlflow_model" not in {a.path for a in client.list_artifacts(run_id)}

    file.write_text(json.dumps({**output, "job": {**output["job"], "id": "x' OR '1'='1"}}))
    code, text = cli("sync", "--all", "--root", str(planted), "--tracking-uri", uri,
                     capsys=capsys)  # fmt: skip
    assert code == 1 and "is not a job id" in text
    assert len(runs_of(client)) == 1


def wait_for(path: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout_s} s"
        time.sleep(0.2)


# longer than one MLflow request waits for a server (tracking.HTTP_RETRIES: 2 retries, after
# 0 s and 4-5 s with MLflow's backoff factor 2 and jitter 1)
OUTAGE_S = 8


@pytest.mark.timeout(900)
def test_an_mlflow_server_away_mid_job_costs_no_data(tmp_path: Path) -> None:
    """The server stops after epoch 2 of 5, for longer than MLflow's client retries would
    wait inside one request; training goes on; the server comes back (same store) during
    epoch 4; the job's run ends FINISHED with every epoch, each point once. (A server away
    until after the job ended: test_jobs_sync_replays_a_job_whose_mirror_failed.)"""
    folder, port = tmp_path / "server", free_port()
    folder.mkdir()
    uri = f"http://127.0.0.1:{port}"
    server = start_mlflow_server(folder, port)
    gates = {name: tmp_path / name for name in ("at2", "go2", "at4", "go4")}
    callbacks = ("trainer.callbacks=["
                 f"{{_target_:tests.helpers.WaitAtEpoch,epoch:2,reached:'{gates['at2']}',"
                 f"release:'{gates['go2']}'}},"
                 f"{{_target_:tests.helpers.WaitAtEpoch,epoch:4,reached:'{gates['at4']}',"
                 f"release:'{gates['go4']}'}}]")  # fmt: skip
    processes = start_jobs(tmp_path, 1, f"tracking.uri={uri}", "trainer.epochs=5", callbacks)
    try:
        wait_for(gates["at2"])
        server.terminate()
        server.wait(timeout=60)
        started = time.monotonic()
        gates["go2"].touch()  # epochs 3 and 4 train while the server is away
        wait_for(gates["at4"])
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - started)))
        server = start_mlflow_server(folder, port)
        gates["go4"].touch()
        (output,) = wait_jobs(tmp_path, processes)
    finally:
        for gate in gates.values():
            gate.touch()
    log = (tmp_path / "job1.log").read_text()
    try:
        assert output["job"]["status"] == "completed"
        assert [row["epoch"] for row in output["history"]] == [1, 2, 3, 4, 5]
        assert "pending" not in output["mlflow"], output["mlflow"]
        # the mirror's process opens the run at once (a thread, once epoch 1 has ended): the
        # outage meets it while it opens the run or while it logs metrics
        assert re.search("failed while (starting the run|logging metrics)", log), \
            "the outage was seen, and waited out"  # fmt: skip
        assert_mirrored(MlflowClient(tracking_uri=uri), output)
    finally:
        server.terminate()
        server.wait(timeout=60)


def mirror_worker_of(pid: int) -> int:
    """The pid of the MLflow mirror's process that job process ``pid`` started."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
        if parent == pid and b"mirror_worker" in command:
            workers.append(int(stat.parent.name))
    assert len(workers) == 1, workers
    return workers[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads Linux's /proc")
@pytest.mark.timeout(600)
def test_a_killed_mirror_process_costs_the_job_nothing_and_jobs_sync_completes_its_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`brevpipe run` mirrors its job from a process of its own (mirror_process); killed
    mid-job (the OOM killer), it takes nothing with it: the job completes, output.json says
    what is not mirrored, the job's log names ``brevpipe jobs sync``, which completes the run."""
    gates = {name: tmp_path / name for name in ("at1", "go1")}
    callback = ("trainer.callbacks=[{_target_:tests.helpers.WaitAtEpoch,epoch:1,"
                f"reached:'{gates['at1']}',release:'{gates['go1']}'}}]")  # fmt: skip
    (process,) = start_jobs(tmp_path, 1, callback)
    try:
        wait_for(gates["at1"])
        os.kill(mirror_worker_of(process.pid), 9)
    finally:
        gates["go1"].touch()
    (output,) = wait_jobs(tmp_path, [process])
    log = (tmp_path / "job1.log").read_text()
    assert output["job"]["status"] == "completed"
    assert output["mlflow"]["pending"] in (["run"], ["end"])
    assert "process ended without answering" in output["mlflow"]["error"]
    assert f"brevpipe jobs sync {output['job']['id']}" in log

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code, text = cli("sync", output["job"]["id"], "--root", str(tmp_path / "jobs"),
                     "--tracking-uri", uri, capsys=capsys)  # fmt: skip
    assert code == 0, text
    synced = json.loads((tmp_path / "jobs" / output["job"]["id"] / "artifacts" /
                         "output.json").read_text())  # fmt: skip
    assert "pending" not in synced["mlflow"]
    assert_mirrored(MlflowClient(tracking_uri=uri), synced)
