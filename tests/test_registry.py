"""The job registry, ``brevpipe jobs``: real jobs (completed, failed, stopped, running,
archived) in a local job root and in one on S3 (moto), a real MLflow sqlite store, and the
stop callback in real Keras fits and in a real job."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from brevpipe.commands import jobs
from brevpipe.data.shapes import ShapesDataset
from brevpipe.integrations import lifecycle
from brevpipe.io import storage
from brevpipe.jobs import control
from brevpipe.jobs import details as job_details
from brevpipe.jobs import records as registry
from brevpipe.jobs.control import StopRequested
from brevpipe.jobs.job import Job
from tests.conftest import compose_config, free_port, tiny_overrides

# one test process for the module: its job roots (a local and an S3 one) are made once
pytestmark = pytest.mark.xdist_group("job-roots")


def jobs_cli(root: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``brevpipe jobs ARGS --root ROOT``: exit code, stdout, stderr."""
    capsys.readouterr()
    code = jobs.main([*args, "--root", root])
    out, err = capsys.readouterr()
    return code, out, err


def jobs_json(root: str, *args: str, capsys: pytest.CaptureFixture[str]) -> Any:
    code, out, err = jobs_cli(root, *args, "--format", "json", capsys=capsys)
    assert code == 0, err
    return json.loads(out)


def output_of(root: str, job_id: str) -> dict[str, Any]:
    return storage.read_json(storage.join(root, job_id, "artifacts", "output.json"))


def unit_job(root: str, **kwargs: Any) -> Job:
    """A job written by :class:`Job` itself (no training), for the fast tests."""
    config = {"seed": 1, "pipeline": {"name": "p", "key_metric": "devel/accuracy"},
              "trainer": {"epochs": 4}}  # fmt: skip
    return Job(root=root, config=config, seed=1, name="unit", pipeline="p", **kwargs)


# -- fast: no model is trained --------------------------------------------------------------
def test_usage_errors_exit_2_and_help_exits_0(capsys) -> None:
    assert jobs.main([]) == 2
    assert jobs.main(["list", "--status", "finished"]) == 2
    assert jobs.main(["list", "--format", "yaml"]) == 2
    assert jobs.main(["show"]) == 2
    assert jobs.main(["frobnicate"]) == 2
    assert jobs.main(["--help"]) == 0
    assert "statistics" in capsys.readouterr().out


def test_a_missing_root_is_one_clear_error(tmp_path: Path, capsys) -> None:
    code, _, err = jobs_cli(str(tmp_path / "nowhere"), "list", capsys=capsys)
    assert code == 1
    assert f"job root {tmp_path / 'nowhere'} does not exist" in err and "--root" in err


def test_unknown_id_names_the_root_and_close_ids(capsys) -> None:
    root = "memory://registry-unknown"
    job = unit_job(root)
    job.open()
    job.complete()
    typo = job.id[:5] + ("0" if job.id[5] != "0" else "1") + job.id[6:]
    code, _, err = jobs_cli(root, "show", typo, capsys=capsys)
    assert code == 1
    assert f"no job '{typo}' in {root}" in err and f"did you mean {job.id}" in err
    code, _, err = jobs_cli(root, "show", typo[:8], capsys=capsys)
    assert code == 1 and job.id in err, "a mistyped short id finds the id too"
    assert jobs_json(root, "show", job.id[:8], capsys=capsys)["id"] == job.id


def test_ambiguous_prefix_lists_the_matches(capsys) -> None:
    root = "memory://registry-ambiguous"
    ids = ["abc12345-0000", "abc12345-1111"]
    for job_id in ids:
        job = unit_job(root, job_id=job_id)
        job.open()
        job.complete()
    code, _, err = jobs_cli(root, "show", "abc1", capsys=capsys)
    assert code == 1 and "matches 2 jobs" in err and ids[0] in err and ids[1] in err
    code, out, _ = jobs_cli(root, "list", capsys=capsys)
    assert code == 0 and "abc12345-0" in out and "abc12345-1" in out, "short ids stay distinct"


def test_bad_job_folders_are_listed_as_unknown(capsys) -> None:
    root = "memory://registry-bad"
    good = unit_job(root)
    good.open()
    good.complete()
    storage.write_bytes(storage.join(root, "half-made", "info.json"), b"{}")
    storage.write_bytes(storage.join(root, "garbled", "artifacts", "output.json"), b"{not json")
    storage.write_bytes(storage.join(root, "foreign", "artifacts", "output.json"), b"[1, 2]")
    rows = {r["id"]: r for r in jobs_json(root, "list", capsys=capsys)}
    assert rows[good.id]["status"] == "completed"
    assert {rows[i]["status"] for i in ("half-made", "garbled", "foreign")} == {"unknown"}
    assert "no artifacts/output.json" in rows["half-made"]["problem"]
    assert "not valid JSON" in rows["garbled"]["problem"]
    unknown = jobs_json(root, "list", "--status", "unknown", capsys=capsys)
    assert {r["id"] for r in unknown} == {"half-made", "garbled", "foreign"}
    capsys.readouterr()
    assert jobs.main(["--root", root, "--format", "json", "list", "--status", "unknown"]) == 0
    assert json.loads(capsys.readouterr().out) == unknown, "options go before the action too"
    code, out, _ = jobs_cli(root, "list", capsys=capsys)
    assert code == 0 and "note: garbled: artifacts/output.json is not valid JSON" in out
    code, _, err = jobs_cli(root, "show", "garbled", capsys=capsys)
    assert code == 1 and "has no readable output.json" in err


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_malformed_output_json_shows_as_unknown_and_hides_no_job(fmt: str, capsys) -> None:
    """Valid JSON with wrong types (issue: one such file broke the whole listing)."""
    root = f"memory://registry-malformed-{fmt}"
    good = []
    for _ in range(2):
        job = unit_job(root)
        job.open()
        job.complete()
        good.append(job.id)
    base = output_of(root, good[0])
    planted = {
        "start-number": {"job": {**base["job"], "start": 12345}},
        "start-list": {"job": {**base["job"], "start": ["2026"]}},
        "metrics-string": {"metrics": "high"},
        "metrics-values": {"metrics": {"devel/accuracy": "0.9"}},
        "status-object": {"job": {**base["job"], "status": {"x": 1}}},
        "status-made-up": {"job": {**base["job"], "status": "exploded"}},
        "stages-list": {"stages": [1, 2]},
        "config-string": {"config": "x"},
    }
    for name, change in planted.items():
        storage.write_json(storage.join(root, name, "artifacts", "output.json"),
                           {**base, **change})  # fmt: skip
    deep = b"[" * 100_000 + b"]" * 100_000
    storage.write_bytes(storage.join(root, "deep", "artifacts", "output.json"), deep)
    code, out, err = jobs_cli(root, "list", "--format", fmt, capsys=capsys)
    assert code == 0 and "Traceback" not in err, err
    bad = [*planted, "deep"]
    if fmt == "json":
        rows = {r["id"]: r for r in json.loads(out)}
        assert all(rows[i]["status"] == "completed" for i in good)
        assert all(rows[i]["status"] == "unknown" and rows[i]["problem"] for i in bad), rows
        assert "'job.start' is int, not str" in rows["start-number"]["problem"]
        assert "nested too deeply" in rows["deep"]["problem"]
    else:
        assert all(i[:8] in out for i in good) and all(f"note: {i[:8]}" in out for i in bad)
    for action in ("show", "statistics"):
        code, _, err = jobs_cli(root, action, "metrics-string", capsys=capsys)
        assert code == 1 and "has no readable output.json" in err and "Traceback" not in err


def test_stop_markers_and_sessions() -> None:
    bucket = "memory://registry-markers/job"
    assert not control.stop_requested(bucket)
    marker = control.request_stop(bucket, session="2030-01-01T00:00:00+00:00")
    assert marker["by"] and marker["requested"]
    assert control.stop_requested(bucket)
    assert control.stop_requested(bucket, session="2030-01-01T00:00:00+00:00")
    assert not control.stop_requested(bucket, session="2031-01-01T00:00:00+00:00"), (
        "a request made for an earlier run of the job does not stop it once resumed"
    )
    control.clear_stop(bucket)
    control.clear_stop(bucket)  # twice is fine
    assert not control.stop_requested(bucket)


def test_stop_only_stops_running_jobs(capsys) -> None:
    root = "memory://registry-stop"
    running, done = unit_job(root), unit_job(root)
    running.open()
    done.open()
    done.complete()
    code, _, err = jobs_cli(root, "stop", done.id, capsys=capsys)
    assert code == 1 and f"job {done.id} is completed, not running" in err
    assert not control.stop_requested(done.bucket_url)
    code, out, _ = jobs_cli(root, "stop", running.id, capsys=capsys)
    assert code == 0 and "stop requested" in out
    marker = control.read_stop(running.bucket_url)
    assert marker["session"] == running.start_time
    code, out, _ = jobs_cli(root, "stop", running.id, capsys=capsys)
    assert code == 0 and "already requested" in out


def test_archive_warns_when_mlflow_is_unreachable_and_still_archives(capsys) -> None:
    root = "memory://registry-unreachable"
    job = unit_job(root)
    job.mlflow = {"tracking_uri": f"http://127.0.0.1:{free_port()}", "run_id": "0" * 32}
    job.open()
    job.complete()
    before = storage.read_bytes(job.output_url)
    started = time.perf_counter()
    code, out, err = jobs_cli(root, "archive", job.id, capsys=capsys)
    assert code == 0 and time.perf_counter() - started < 60, "MLflow's minutes of retries"
    assert "warning: could not delete MLflow run" in err and "127.0.0.1" in err
    assert jobs_json(root, "list", capsys=capsys) == []
    assert [r["archived"] for r in jobs_json(root, "list", "--all", capsys=capsys)] == [True]
    assert storage.read_bytes(job.output_url) == before, "output.json stays as the job wrote it"
    code, _, err = jobs_cli(root, "unarchive", job.id, capsys=capsys)
    assert code == 0 and "could not restore" in err
    assert len(jobs_json(root, "list", capsys=capsys)) == 1


def test_list_reads_output_json_concurrently_on_s3(s3_bucket: str, monkeypatch) -> None:
    import s3fs

    root = f"{s3_bucket}/jobs"
    for _ in range(12):
        job = unit_job(root)
        job.open()
        job.complete()
    in_flight, peak, keys = 0, 0, []
    original = s3fs.S3FileSystem._cat_file

    async def counting_cat_file(self, path, *args, **kwargs):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        keys.append(path)
        try:
            return await original(self, path, *args, **kwargs)
        finally:
            in_flight -= 1

    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", counting_cat_file)
    records = registry.list_jobs(root)
    assert [r.status for r in records] == ["completed"] * 12
    assert len(keys) == 36, "one GET per output.json, registry.json, heartbeat; no other reads"
    assert peak > 1, "the reads overlap instead of going one after another"


def test_jobs_list_imports_neither_tensorflow_nor_mlflow(tmp_path: Path) -> None:
    job = unit_job(str(tmp_path / "jobs"))
    job.open()
    job.complete()
    code = (
        "import sys; from brevpipe.commands import cli; "
        f"assert cli.main(['jobs', 'list', '--root', {str(tmp_path / 'jobs')!r}]) == 0; "
        "heavy = sorted({'tensorflow', 'keras', 'mlflow', 'hydra'} & set(sys.modules)); "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert job.id[:8] in result.stdout


# -- slow: real jobs that train tiny models -------------------------------------------------
def request_stop_after_epoch(root: str, job_id: str, report: str, epoch: int = 1) -> Any:
    """A Keras callback standing in for a user who runs ``brevpipe jobs stop ID`` from another
    terminal once epoch ``epoch`` is done; it records what ``statistics`` said then."""
    import keras

    class RequestStop(keras.callbacks.Callback):
        def on_epoch_end(self, index: int, logs: dict | None = None) -> None:
            if index + 1 == epoch:
                stats = job_details.statistics(registry.get_job(root, job_id))
                code = jobs.main(["stop", job_id, "--root", root])
                Path(report).write_text(json.dumps({"code": code, "statistics": stats}))

    return RequestStop()


@dataclass
class JobRoot:
    """A job root holding one job of each kind; ``ids`` by kind."""

    root: str
    tracking_uri: str
    tmp: Path
    ids: dict[str, str] = field(default_factory=dict)


def corrupt_dataset(tmp: Path) -> Path:
    """A folder dataset whose circle JPEGs are corrupt (training fails naming them)."""
    folder = ShapesDataset(samples_per_class=16, image_size=32, cache_dir=str(tmp / "src"))
    data = tmp / "corrupt"
    shutil.copytree(folder.generate(), data)
    for i, image in enumerate(sorted((data / "circle").glob("*.jpg"))):
        image.write_bytes(b"\xff\xd8\xff\xe0" + f"truncated {i}".encode())
    return data


def root_overrides(root: str, tmp: Path, *extra: str, shapes: bool = True) -> list[str]:
    """The tiny job of conftest in job root ``root`` (tracking in ``tmp/mlflow.db``)."""
    tiny = [o for o in tiny_overrides(tmp, shapes) if not o.startswith("job.root=")]
    return [*tiny, f"job.root={root}", "pipeline.stages.report.atlas_size=4", *extra]


def build_root(root: str, tmp: Path, *, everything: bool) -> JobRoot:
    """Run real tiny jobs into ``root``: completed, failed (a corrupt image, local only),
    archived (failed: its dataset does not exist); and, written by :class:`Job` as the runner
    writes them, one in mid-training and one stopped (the real stop is tested on its own)."""
    from brevpipe.engine.runner import StageContext, resolve_config, run_job
    from brevpipe.errors import DataError

    def overrides(*extra: str, shapes: bool = True) -> list[str]:
        return root_overrides(root, tmp, *extra, shapes=shapes)

    made = JobRoot(storage.normalize(root), f"sqlite:///{tmp / 'mlflow.db'}", tmp)

    made.ids["completed"] = run_job(compose_config(overrides("seed=3"))).id

    missing = overrides("dataset=folder", f"dataset.url={tmp / 'no-such-data'}", shapes=False)
    with pytest.raises(DataError, match="does not exist"):
        run_job(compose_config(missing))
    (archived,) = set(registry.job_ids(root)) - set(made.ids.values())
    made.ids["archived"] = archived
    lifecycle.set_archived(root, archived, True)

    if everything:
        data = corrupt_dataset(tmp)
        corrupt = overrides("dataset=folder", f"dataset.url={data}", shapes=False)
        with pytest.raises(DataError, match="cannot be decoded"):
            run_job(compose_config(corrupt))
        (failed,) = set(registry.job_ids(root)) - set(made.ids.values())
        made.ids["failed"] = failed

    plain = resolve_config(compose_config(overrides("tracking=none")))
    stopped = Job(root=root, config=plain, seed=1, name="classification",
                  pipeline="classification")  # fmt: skip
    stopped.open()
    stopped.stop()
    made.ids["stopped"] = stopped.id

    # A job in mid-training, written the way the runner writes it (Job + StageContext).
    job = Job(root=root, config=plain, seed=1, name="classification", pipeline="classification")
    job.open()
    for name in ("samples", "split"):
        job.stages[name] = {"cache_key": name, "status": "completed", "seconds": 0.1}
    job.stages["train"] = {"cache_key": "t", "status": "running", "seconds": None}
    ctx = StageContext(job, "train", seed=1, url=job.bucket.artifact("stages", "train"))
    ctx.add_epoch(1, {"loss": 1.25, "accuracy": 0.5, "val_loss": 1.5, "val_accuracy": 0.25})
    made.ids["running"] = job.id
    return made


@pytest.fixture(scope="module", params=["local", "s3"])
def job_root(request: pytest.FixtureRequest, tmp_path_factory) -> JobRoot:
    """A job root with real jobs, local (every kind) or on moto's S3 (all but the failed one
    with a corrupt image)."""
    import s3fs

    tmp = tmp_path_factory.mktemp(f"registry-{request.param}")
    if request.param == "local":
        return build_root(str(tmp / "jobs"), tmp, everything=True)
    request.getfixturevalue("s3_server")
    bucket = f"registry-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
    s3fs.S3FileSystem.clear_instance_cache()
    return build_root(f"s3://{bucket}/jobs", tmp, everything=False)


def mlflow_run(made: JobRoot, job_id: str) -> Any:
    from mlflow import MlflowClient

    run_id = output_of(made.root, job_id)["mlflow"]["run_id"]
    return MlflowClient(tracking_uri=made.tracking_uri).get_run(run_id)


@pytest.mark.slow
def test_list_shows_each_job_once_and_hides_archived(job_root: JobRoot, capsys) -> None:
    root, ids = job_root.root, job_root.ids
    rows = {r["id"]: r for r in jobs_json(root, "list", capsys=capsys)}
    visible = {kind: i for kind, i in ids.items() if kind != "archived"}
    assert set(rows) == set(visible.values())
    for kind, job_id in visible.items():
        assert rows[job_id]["status"] == kind, kind
        assert rows[job_id]["pipeline"] == "classification"
    completed = output_of(root, ids["completed"])
    assert rows[ids["completed"]]["key_metric"] == {
        "name": "devel/accuracy", "value": completed["metrics"]["devel/accuracy"],
    }  # fmt: skip
    assert rows[ids["completed"]]["duration_s"] > 0
    every = {r["id"]: r for r in jobs_json(root, "list", "--all", capsys=capsys)}
    assert set(every) == set(ids.values())
    assert every[ids["archived"]]["archived"] and every[ids["archived"]]["status"] == "failed"
    assert [r["id"] for r in jobs_json(root, "list", "--status", "running", capsys=capsys)] == [
        ids["running"]
    ]
    failed = jobs_json(root, "list", "--status", "failed", "--all", capsys=capsys)
    assert {r["id"] for r in failed} == {ids["archived"], ids.get("failed", ids["archived"])}
    assert jobs_json(root, "list", "--pipeline", "segmentation", capsys=capsys) == []
    assert len(jobs_json(root, "list", "--pipeline", "classification", capsys=capsys)) == len(rows)
    code, out, _ = jobs_cli(root, "list", capsys=capsys)
    assert code == 0 and "devel/accuracy" in out
    assert all(job_id[:8] in out for job_id in visible.values())
    assert ids["archived"][:8] not in out


@pytest.mark.slow
def test_show_summarises_config_metrics_stages_artifacts_and_run(job_root: JobRoot, capsys) -> None:
    root, job_id = job_root.root, job_root.ids["completed"]
    output = output_of(root, job_id)
    info = jobs_json(root, "show", job_id[:8], capsys=capsys)
    assert info["id"] == job_id and info["status"] == "completed"
    assert info["config"]["seed"] == 3
    assert info["config"]["params"]["trainer.epochs"] == 2
    assert info["config"]["params"]["loader.target_size"] == [32, 32]
    assert info["metrics"] == output["metrics"]
    assert [s["name"] for s in info["stages"]] == list(output["stages"])
    assert {s["status"] for s in info["stages"]} == {"completed"}
    assert not any(s["cached"] for s in info["stages"])
    sizes = {a["path"]: a["size"] for a in info["artifacts"]}
    fs, path = storage.get_fs(storage.join(root, job_id, "artifacts", "output.json"))
    assert sizes["output.json"] == fs.size(path)
    assert {"model/model.keras", "samples.csv", "report.html"} <= set(sizes)
    assert info["mlflow"]["run_id"] == output["mlflow"]["run_id"]
    code, out, _ = jobs_cli(root, "show", job_id, capsys=capsys)
    assert code == 0
    assert output["mlflow"]["run_id"] in out and "model/model.keras" in out
    assert "stage caches" in out and "trainer.batch_size" in out


@pytest.mark.slow
def test_statistics_of_running_and_finished_jobs(job_root: JobRoot, capsys) -> None:
    root, ids = job_root.root, job_root.ids
    running = jobs_json(root, "statistics", ids["running"], capsys=capsys)
    assert running["status"] == "running"
    assert (running["epoch"], running["num_epochs"], running["epoch_progress"]) == (1, 2, 50.0)
    assert (running["stages_done"], running["stages_total"]) == (2, 7)
    assert running["latest_epoch"] == {"epoch": 1, "loss": 1.25, "accuracy": 0.5,
                                       "val_loss": 1.5, "val_accuracy": 0.25}  # fmt: skip
    states = {s["name"]: s["status"] for s in running["stages"]}
    assert states == {"samples": "completed", "split": "completed", "train": "running",
                      "evaluate": "pending", "preview": "pending", "export": "pending",
                      "report": "pending"}  # fmt: skip
    done = jobs_json(root, "statistics", ids["completed"], capsys=capsys)
    assert (done["epoch"], done["epoch_progress"], done["stage_progress"]) == (2, 100.0, 100.0)
    per_stage = {s["name"]: s["metrics"] for s in done["stages"]}
    output = output_of(root, ids["completed"])
    assert per_stage["evaluate"]["devel/accuracy"] == output["metrics"]["devel/accuracy"]
    assert per_stage["train"] == {k: v for k, v in output["history"][-1].items() if k != "epoch"}
    code, out, _ = jobs_cli(root, "statistics", ids["running"], capsys=capsys)
    assert code == 0 and "epochs  1/2  (50%)" in out and "stages  2/7" in out


@pytest.mark.slow
def test_archive_and_unarchive_follow_the_mlflow_run(job_root: JobRoot, capsys) -> None:
    root, ids = job_root.root, job_root.ids
    assert mlflow_run(job_root, ids["archived"]).info.lifecycle_stage == "deleted"
    job_id = ids["completed"]
    before = storage.read_bytes(storage.join(root, job_id, "artifacts", "output.json"))
    code, out, err = jobs_cli(root, "archive", job_id, capsys=capsys)
    assert code == 0 and "deleted" in out and not err
    assert mlflow_run(job_root, job_id).info.lifecycle_stage == "deleted"
    assert job_id not in {r["id"] for r in jobs_json(root, "list", capsys=capsys)}
    code, out, err = jobs_cli(root, "unarchive", job_id, capsys=capsys)
    assert code == 0 and "restored" in out and not err
    assert mlflow_run(job_root, job_id).info.lifecycle_stage == "active"
    assert job_id in {r["id"] for r in jobs_json(root, "list", capsys=capsys)}
    after = storage.read_bytes(storage.join(root, job_id, "artifacts", "output.json"))
    assert after == before, "archiving never rewrites the job's output.json"
    code, _, err = jobs_cli(root, "archive", ids["running"], capsys=capsys)
    assert code == 1 and "stop it first" in err


@pytest.mark.slow
def test_stop_writes_the_marker_for_running_jobs_only(job_root: JobRoot, capsys) -> None:
    root, ids = job_root.root, job_root.ids
    code, _, err = jobs_cli(root, "stop", ids["completed"], capsys=capsys)
    assert code == 1 and "is completed, not running" in err
    bucket = storage.join(root, ids["running"])
    try:
        code, out, _ = jobs_cli(root, "stop", ids["running"], capsys=capsys)
        assert code == 0 and "stop requested" in out
        assert control.stop_requested(bucket)
        info = jobs_json(root, "show", ids["running"], capsys=capsys)
        assert info["stop_request"]["session"] == output_of(root, ids["running"])["job"]["start"]
    finally:
        control.clear_stop(bucket)


def test_a_stop_request_before_a_stage_ends_the_job_as_stopped(tmp_path: Path) -> None:
    """The runner looks for a request before each stage (no model is trained here)."""
    from brevpipe.engine.runner import run_job

    root, job_id = str(tmp_path / "jobs"), str(uuid.uuid4())
    control.request_stop(f"{root}/{job_id}")  # e.g. asked for while the job was queued
    settings = root_overrides(root, tmp_path, f"job.id={job_id}")
    with pytest.raises(StopRequested, match="stop requested before stage 'samples'"):
        run_job(compose_config(settings))
    output = output_of(root, job_id)
    assert output["job"]["status"] == "stopped"
    assert "brevpipe jobs stop" in output["job"]["error"]
    assert output["stages"] == {}


@pytest.mark.slow
def test_a_stop_request_ends_a_training_job_as_stopped_and_it_resumes(tmp_path: Path) -> None:
    """``brevpipe jobs stop`` during epoch 1's end; the job ends as ``stopped`` at the next
    batch; ``brevpipe run job.id=...`` later resumes it, and the old request is not applied."""
    from brevpipe.engine.runner import run_job

    root, job_id = str(tmp_path / "jobs"), str(uuid.uuid4())
    report = tmp_path / "stop-report.json"
    callbacks = (
        f"trainer.callbacks=[{{_target_: tests.test_registry.request_stop_after_epoch, "
        f"root: '{root}', job_id: '{job_id}', report: '{report}'}}]"
    )  # the stage's stop callback (trainer.stop_check_s) looks at every batch end here
    settings = root_overrides(root, tmp_path, f"job.id={job_id}", "trainer.epochs=3", callbacks,
                              "trainer.stop_check_s=0")  # fmt: skip
    with pytest.raises(StopRequested, match="stop requested"):
        run_job(compose_config(settings))
    seen = json.loads(report.read_text())
    assert seen["code"] == 0
    live = seen["statistics"]
    assert live["status"] == "running", "output.json is rewritten after every epoch"
    assert (live["epoch"], live["num_epochs"], live["stages_done"]) == (1, 3, 2)
    output = output_of(root, job_id)
    assert output["job"]["status"] == "stopped"
    assert [h["epoch"] for h in output["history"]] == [1], "stopped in epoch 2 of 3"
    assert "evaluate" not in output["stages"]
    stats = job_details.statistics(registry.get_job(root, job_id))
    assert {s["name"]: s["status"] for s in stats["stages"]}["train"] == "stopped"
    made = JobRoot(root, f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path)
    assert mlflow_run(made, job_id).info.status == "KILLED"

    resumed = run_job(compose_config(settings))
    assert resumed.status == "completed"
    output = output_of(root, job_id)
    assert [h["epoch"] for h in output["history"]] == [1, 2, 3]
    assert output["stages"]["train"]["resumed_after_epoch"] == 1


class TinyFit:
    """A tiny dense model fitted on random data, 16 batches an epoch; counts the batches."""

    def __init__(self) -> None:
        import keras

        keras.utils.set_random_seed(0)
        self.model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        self.model.compile(optimizer="sgd", loss="mse")
        self.batches = 0

    def __call__(self, *callbacks: Any, epochs: int = 2) -> int:
        import keras
        import numpy as np

        fit = self

        class Count(keras.callbacks.Callback):
            def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
                fit.batches += 1

        self.batches = 0
        x, y = np.random.rand(64, 4), np.random.rand(64, 2)
        self.model.fit(x, y, batch_size=4, epochs=epochs, verbose=0,
                       callbacks=[Count(), *callbacks])  # fmt: skip
        return self.batches


def request_at_batch(bucket: str, at: int) -> Any:
    """A callback that requests a stop at the end of training batch ``at`` (1-based)."""
    import keras

    class Request(keras.callbacks.Callback):
        seen = 0

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            self.seen += 1
            if self.seen == at:
                control.request_stop(bucket)

    return Request()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["local", "memory", "s3"])
def test_stop_callback_ends_a_keras_fit_at_the_next_batch(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    bucket = {
        "local": lambda: str(tmp_path / "jobs" / "job"),
        "memory": lambda: f"memory://registry-fit/{uuid.uuid4().hex}",
        "s3": lambda: request.getfixturevalue("s3_bucket") + "/jobs/job",
    }[kind]()
    fit = TinyFit()
    assert fit(control.stop_callback(bucket, check_every_s=0)) == 32, "no request: 2 epochs"
    assert not fit.model.stop_training
    with pytest.raises(StopRequested, match="stop requested"):
        fit(request_at_batch(bucket, 5), control.stop_callback(bucket, check_every_s=0))
    assert fit.batches == 5, "the fit ends at the batch boundary after the request"
    assert fit.model.stop_training
    control.clear_stop(bucket)
    assert fit(control.stop_callback(bucket, check_every_s=0)) == 32, "cleared: runs again"
    control.request_stop(bucket)  # a request made before training is seen at the first batch
    with pytest.raises(StopRequested):
        fit(control.stop_callback(bucket, check_every_s=0))
    assert fit.batches == 1
    control.clear_stop(bucket)


@pytest.mark.slow
def test_stop_callback_checks_storage_at_most_every_check_every_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = str(tmp_path / "job")
    checks = []
    original = control.stop_requested

    def counting(url: str, session: str | None = None) -> bool:
        checks.append(url)
        return original(url, session)

    monkeypatch.setattr(control, "stop_requested", counting)
    fit = TinyFit()
    # Checked at the first batch, then not again within the hour: the request goes unseen.
    assert fit(request_at_batch(bucket, 5), control.stop_callback(bucket, 3600)) == 32
    assert len(checks) == 1
    control.clear_stop(bucket)
    checks.clear()
    with pytest.raises(StopRequested):
        fit(request_at_batch(bucket, 5), control.stop_callback(bucket, check_every_s=0))
    assert len(checks) == 5, "with check_every_s=0 every batch end looks"
