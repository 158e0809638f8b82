"""``brevpipe rerun``: exact reruns from output.json (local and S3), the target allow-list,
secrets kept out of every artifact, data-change detection."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from omegaconf import OmegaConf

from brevpipe.commands import rerun as rerun_command
from brevpipe.config.components import modernize
from brevpipe.data.shapes import ShapesDataset
from brevpipe.engine.rerun import check_fingerprint, rebuild_config
from brevpipe.engine.runner import resolve_config, run_job
from brevpipe.errors import ConfigError, DataError
from brevpipe.integrations import mirror_process
from brevpipe.io import storage
from brevpipe.jobs.output_json import read_output
from tests.conftest import compose_config, tiny_overrides


def planted_output(tmp_path: Path) -> dict:
    """An output.json as a job writes it, without running the job."""
    cfg = compose_config(tiny_overrides(tmp_path))
    return {
        "schema_version": 1,
        "job": {"id": "original", "bucket": str(tmp_path / "jobs" / "original")},
        "config": resolve_config(cfg),
        "seed": 42,
        "samples": {"fingerprint": "abc"},
        "pipeline_template": OmegaConf.to_container(cfg.pipeline, resolve=False),
    }


def test_rebuilt_config_equals_the_original_with_rerun_settings(tmp_path: Path) -> None:
    output = planted_output(tmp_path)
    cfg = resolve_config(rebuild_config(output, "u", []))
    for key in ("seed", "dataset", "trainer", "model", "loader", "pipeline"):
        if key != "pipeline":
            assert cfg[key] == output["config"][key], key
    assert cfg["rerun"]["of"] == "u" and cfg["rerun"]["fingerprint"] == "abc"
    assert cfg["job"]["id"] is None and cfg["job"]["root"] == str(tmp_path / "jobs")
    # overrides reach the stages through the re-linked pipeline
    cfg = resolve_config(rebuild_config(output, "u", ["trainer.epochs=7", "seed=9"]))
    assert cfg["pipeline"]["stages"]["train"]["trainer"]["epochs"] == 7
    assert cfg["seed"] == 9


def test_planted_targets_are_refused(tmp_path: Path) -> None:
    output = planted_output(tmp_path)
    output["config"]["model"]["_target_"] = "os.system"
    with pytest.raises(ConfigError, match="does not match its config"):
        rebuild_config(output, "u", [])  # planted in one place only
    output["config"]["pipeline"]["stages"]["train"]["model"]["_target_"] = "os.system"
    with pytest.raises(ConfigError, match=r"refusing model._target_: 'os.system' is not a "
                                          r"registered component.*allow_targets"):
        rebuild_config(output, "u", [])
    # the saved allow-list is untrusted; only the command line's counts
    output["config"]["rerun"]["allow_targets"] = ["os.system"]
    output["config"]["pipeline"]["stages"]["samples"]["rerun"]["allow_targets"] = ["os.system"]
    with pytest.raises(ConfigError, match="os.system"):
        rebuild_config(output, "u", [])
    rebuild_config(output, "u", ["rerun.allow_targets=[os.system]"])

    output = planted_output(tmp_path)
    output["pipeline_template"]["stages"]["samples"]["_target_"] = "subprocess.run"
    output["config"]["pipeline"]["stages"]["samples"]["_target_"] = "subprocess.run"
    with pytest.raises(ConfigError, match="subprocess.run"):
        rebuild_config(output, "u", [])
    output = planted_output(tmp_path)
    output["pipeline_template"]["stages"]["samples"]["dataset"] = "${oc.env:AWS_SECRET_ACCESS_KEY}"
    with pytest.raises(ConfigError, match="not a plain config link"):
        rebuild_config(output, "u", [])


def test_bad_urls_and_overrides_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_output(str(tmp_path / "nope" / "output.json"))
    (tmp_path / "x.json").write_text("not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        read_output(str(tmp_path / "x.json"))
    (tmp_path / "y.json").write_text('{"a": 1}')
    with pytest.raises(ConfigError, match="not a brevpipe output.json"):
        read_output(str(tmp_path / "y.json"))
    output = planted_output(tmp_path)
    with pytest.raises(ConfigError, match="not config group choices"):
        rebuild_config(output, "u", ["model=other"])
    with pytest.raises(ConfigError, match="trainer.epoks is not in the job's config"):
        rebuild_config(output, "u", ["trainer.epoks=3"])
    with pytest.raises(ConfigError, match="bad override"):
        rebuild_config(output, "u", ["trainer.epochs=[1,"])


def test_fingerprint_check() -> None:
    check_fingerprint("a", None)
    check_fingerprint("a", {"fingerprint": "a"})
    with pytest.raises(DataError, match="--allow-data-change"):
        check_fingerprint("b", {"fingerprint": "a", "job_id": "j"})
    check_fingerprint("b", {"fingerprint": "a", "allow_data_change": True})


def rerun(capsys: pytest.CaptureFixture, *args: str) -> dict:
    """``brevpipe rerun ARGS`` in this process; the new job's output.json."""
    assert rerun_command.main(list(args)) == 0
    # its job's mirror ran in a process of its own; later jobs of this process keep a thread
    assert not mirror_process.OWN_PROCESS.get()
    printed = capsys.readouterr().out
    bucket = re.search(r"bucket:\s+(\S+)", printed).group(1)
    return storage.read_json(storage.join(bucket, "artifacts", "output.json"))


@pytest.mark.slow
def test_local_rerun_gives_identical_metrics_and_keeps_secrets_out(
    tiny_config, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    secret = "PLANTED-SECRET-v4lue"
    job = run_job(tiny_config("seed=3", f"+storage.options.s3.secret={secret}",
                              f"+storage.options.s3.key={secret}-id"))  # fmt: skip
    original = storage.read_json(job.output_url)
    capsys.readouterr()
    again = rerun(capsys, job.output_url)
    assert again["job"]["id"] != job.id
    assert again["rerun_of"] == {"url": job.output_url, "job_id": job.id}
    assert again["metrics"] == original["metrics"]
    assert again["history"] == original["history"]
    assert again["config"]["split"]["reuse_url"] == job.bucket.artifact("sample_identification.csv")
    assert (Path(job.bucket_url).parent / again["job"]["id"]).is_dir()

    files = [Path(job.bucket_url, "info.json"), Path(job.output_url)]
    files += [
        Path(again["job"]["bucket"], "info.json"),
        Path(again["job"]["bucket"], "artifacts", "output.json"),
    ]
    for file in files:
        assert secret not in file.read_text(), file
    client = MlflowClient(tracking_uri=original["mlflow"]["tracking_uri"])
    for run_id in (original["mlflow"]["run_id"], again["mlflow"]["run_id"]):
        params = client.get_run(run_id).data.params
        assert params.get("storage.options.s3.secret", "***") == "***"
        assert not any(secret in value for value in params.values())

    shorter = rerun(capsys, job.output_url, "trainer.epochs=1")
    assert [h["epoch"] for h in shorter["history"]] == [1]
    assert shorter["config"]["pipeline"]["stages"]["train"]["trainer"]["epochs"] == 1
    assert shorter["rerun_of"]["job_id"] == job.id


@pytest.mark.slow
def test_rerun_from_s3_and_data_change_detection(
    tiny_config, tmp_path: Path, s3_bucket: str, capsys: pytest.CaptureFixture
) -> None:
    folder = ShapesDataset(samples_per_class=16, image_size=32, cache_dir=str(tmp_path / "src"))
    storage.upload(folder.generate(), f"{s3_bucket}/data")
    job = run_job(tiny_config("dataset=folder", f"dataset.url={s3_bucket}/data",
                              f"job.root={s3_bucket}/jobs", "tracking=none"))  # fmt: skip
    original = storage.read_json(job.output_url)
    capsys.readouterr()
    again = rerun(capsys, job.output_url)
    assert again["job"]["bucket"].startswith(f"{s3_bucket}/jobs/")
    assert again["metrics"] == original["metrics"]

    local = tmp_path / "extra.png"
    shutil.copy(next((folder.generate() / "circle").glob("*.png")), local)
    storage.upload(local, f"{s3_bucket}/data/circle/extra.png")
    assert rerun_command.main([job.output_url]) == 1
    assert "the data changed since job" in capsys.readouterr().err
    changed = rerun(capsys, job.output_url, "--allow-data-change")
    assert changed["samples"]["count"] == original["samples"]["count"] + 1
    assert changed["job"]["status"] == "completed"


def test_rerun_of_a_job_from_before_reduced_jpeg_decode_decodes_as_it_did(tmp_path: Path) -> None:
    output = planted_output(tmp_path)
    assert output["config"]["loader"]["reduced_jpeg_decode"] is True
    cfg = resolve_config(rebuild_config(output, "u", []))
    assert cfg["loader"]["reduced_jpeg_decode"] is True

    def forget(tree):  # as jobs before 2026-11-26 wrote it, the resolved pipeline included
        if isinstance(tree, dict):
            tree.pop("reduced_jpeg_decode", None)
            for value in tree.values():
                forget(value)

    forget(output["config"])
    cfg = resolve_config(rebuild_config(output, "u", []))
    assert cfg["loader"]["reduced_jpeg_decode"] is False
    assert cfg["pipeline"]["stages"]["train"]["loader"]["reduced_jpeg_decode"] is False


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.slow
@pytest.mark.parametrize("written", ["2026-11-26", "2026-12-06"])
def test_an_output_json_of_an_earlier_release_still_reruns(
    capsys: pytest.CaptureFixture, written: str
) -> None:
    """tests/fixtures/job-<date> hold a tiny job's output.json and split as brevpipe wrote them
    on that date (seed 5, shapes data generated under /tmp/brevpipe-fixture-<date>, tracking
    none): 2026-11-26 before the engine/commands/stages layout, 2026-12-06 before components
    were recorded by their public names. Each rerun must find every target and give its
    results."""
    from filelock import FileLock

    original = json.loads((FIXTURES / f"job-{written}" / "artifacts" / "output.json").read_text())
    bucket = Path(original["job"]["bucket"])
    root = Path(f"/tmp/brevpipe-fixture-{written}")  # where it ran: its sample paths say so
    assert bucket.parent.parent == root
    # the recorded paths are absolute: two suites on one host take turns with them
    with FileLock(f"{root}.lock", timeout=600):
        rerun_the_fixture(capsys, original, bucket, FIXTURES / f"job-{written}", root)


def rerun_the_fixture(
    capsys: pytest.CaptureFixture, original: dict, bucket: Path, fixture: Path, root: Path
) -> None:
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(fixture, bucket)
    try:
        again = rerun(capsys, str(bucket / "artifacts" / "output.json"))
        assert again["job"]["status"] == "completed"
        assert again["samples"] == original["samples"]
        assert again["metrics"].keys() == original["metrics"].keys()
        for name, value in original["metrics"].items():
            assert again["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
        # the same settings, every component recorded by its public name
        assert again["config"]["trainer"]["_target_"] == "trainer:trainer"
        assert again["config"]["trainer"]["optimizer"]["_target_"] == "optimizer:adam"
        assert again["pipeline_template"]["stages"]["split"]["_target_"] == "stage:split_samples"
        # the report reads only what it declares: evaluate's predictions, passed on
        assert {"predictions", "history"} <= set(again["pipeline_template"]["stages"]["report"]
                                                 ["inputs"])  # fmt: skip
        assert len(again["history"]) == len(original["history"]) == 2
        charts = Path(again["job"]["bucket"], "artifacts", "charts")
        assert (charts / "training_curves.vl.json").exists(), "the report got the history"
        today = modernize(original["config"])
        for key in ("dataset", "loader", "model", "trainer", "sampler", "tracking"):
            assert again["config"][key] == today[key], key
        split = again["config"]["split"]
        assert split["reuse_url"] == str(bucket / "artifacts" / "sample_identification.csv")
    finally:
        shutil.rmtree(root, ignore_errors=True)
