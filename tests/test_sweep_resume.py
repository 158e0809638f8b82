"""Sweeps that resume after a crash: ``brevpipe sweep list|show|resume``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from brevpipe.commands import sweep as sweep_command
from brevpipe.integrations.sweep import sweep_id
from tests.conftest import tiny_overrides

MARKER = "/tmp/brevpipe-hostile-marker"  # what a hostile record would write
GRID = ["seed=1,2", "trainer.epochs=12", "runtime.heartbeat_s=1"]  # a killed trial: lost in 3 s


def start_sweep(folder: Path, *args: str) -> subprocess.Popen:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "brevpipe", "run", "-m", *tiny_overrides(folder), *args,
         "hydra.sweep.dir=multirun/grid"],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: the launcher and its jobs
    )  # fmt: skip


def outputs(root: Path) -> dict[int, dict]:
    """The trials' output.json files by trial number."""
    found = {}
    for path in root.glob("*/artifacts/output.json"):
        try:
            output = json.loads(path.read_text())
        except ValueError:  # being written
            continue
        found[output["sweep"]["trial"]] = output
    return found


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = sweep_command.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_grid_sweep_killed_and_resumed_equals_an_uninterrupted_one(
    tmp_path: Path, capsys
) -> None:
    whole = start_sweep(tmp_path / "whole", *GRID)
    killed_dir = tmp_path / "killed"
    killed = start_sweep(killed_dir, *GRID)
    root = killed_dir / "jobs"
    deadline = time.monotonic() + 300
    while not ((found := outputs(root)).get(0, {}).get("job", {}).get("status") == "completed"
               and len(found.get(1, {}).get("history", [])) >= 3):  # epoch 2 checkpointed
        assert killed.poll() is None and time.monotonic() < deadline, killed.stdout.read()
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)  # the launcher and its job, without a word
    killed.wait(30)
    at_kill = outputs(root)
    assert at_kill[1]["job"]["status"] == "running" and len(at_kill[1]["history"]) < 12

    while True:  # its trial's heartbeat stops: lost, and the sweep interrupted
        code, out, _ = cli(capsys, "list", "--root", str(root), "--format", "json")
        [listed] = json.loads(out)
        if listed["status"] != "running":
            break
        assert time.monotonic() < deadline + 60, listed
        time.sleep(0.5)
    assert code == 0 and listed["status"] == "interrupted" and listed["completed"] == 1
    resumed = subprocess.run([sys.executable, "-m", "brevpipe", "sweep", "resume",
                              listed["id"][:10], "--root", str(root)],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "reused from an earlier run of the sweep" in resumed.stdout
    assert whole.wait(600) == 0, whole.stdout.read()

    after, reference = outputs(root), outputs(tmp_path / "whole" / "jobs")
    assert sorted(after) == sorted(reference) == [0, 1]
    assert after[0]["job"]["end"] == at_kill[0]["job"]["end"]  # trial 0 was not run again
    assert after[1]["job"]["resumed"] and after[1]["stages"]["train"]["resumed_after_epoch"] >= 2
    for trial in (0, 1):
        assert after[trial]["job"]["status"] == "completed"
        assert after[trial]["job"]["id"].endswith(f"-t00{trial}")
        assert after[trial]["metrics"] == pytest.approx(reference[trial]["metrics"], abs=1e-6)
        assert [h["loss"] for h in after[trial]["history"]] == pytest.approx(
            [h["loss"] for h in reference[trial]["history"]], abs=1e-6)

    record = json.loads(next((root / "sweeps").glob("*.json")).read_text())
    client = MlflowClient(tracking_uri=after[0]["mlflow"]["tracking_uri"])
    children = client.search_runs([record["experiment_id"]],
                                  filter_string=f"tags.mlflow.parentRunId = '{record['run_id']}'")
    assert sorted(r.data.tags["brevpipe.job_id"] for r in children) == sorted(
        o["job"]["id"] for o in after.values())  # each trial once, under the same parent
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    code, out, _ = cli(capsys, "show", listed["id"], "--root", str(root))
    assert code == 0 and "ended" in out.splitlines()[0] and "best: trial" in out


def write_record(root: Path, **fields: object) -> str:
    """A sweep record under ``root`` that leads back to its sweep; returns its id."""
    record = {"objective": "devel/accuracy", "direction": "maximize", "cwd": str(root.parent),
              "sweep_dir": "multirun/x", "overrides": ["seed=1,2"],
              "hydra_overrides": ["hydra.mode=MULTIRUN"], "sweeper": "", "created": "2026",
              **fields}  # fmt: skip
    sweep = str(record.pop("sweep_id", None) or sweep_id(str(root.parent), "multirun/x"))
    (root / "sweeps").mkdir(parents=True, exist_ok=True)
    (root / "sweeps" / f"{sweep}.json").write_text(json.dumps({"sweep_id": sweep, **record}))
    return sweep


@pytest.mark.parametrize(("fields", "message"), [
    ({"overrides": ["model=nope"]}, "no longer composes: "),
    ({"overrides": ["trainer.epochs=[1,2]"]}, "no longer composes: "),
    ({"overrides": ["model=glob(*)"]}, "no longer composes: "),
    ({"overrides": ["seed=1,"]}, "no longer composes: "),
    ({"hydra_overrides": ["hydra.callbacks.x._target_=os.system"]}, "asks for 'hydra.callbacks"),
    ({"hydra_overrides": ["hydra/launcher=ray", "hydra.launcher.ray.init.address=ray://x"]},
     "asks for 'hydra.launcher.ray.init.address"),
    ({"overrides": ["+model._target_=os.system"]}, "asks for '+model._target_"),
    ({"overrides": [f"+dataset.x={{_target_:pathlib.Path.write_text,_args_:[{MARKER},y]}}"]},
     "asks for '+dataset.x={_target_"),
    ({"overrides": ["job.name=${oc.env:HOME}"]}, "asks for 'job.name=${oc.env:HOME}'"),
    ({"overrides": ["+hydra.searchpath=[file:///tmp]"]}, "asks for '+hydra.searchpath"),
    ({"sweeper": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"},
     "ran with another Optuna sweeper"),
    ({"overrides": ["search=lr_dense", "search.storage=sqlite:////tmp/elsewhere.db"]},
     "asks for 'search.storage"),
    ({"hydra_overrides": ["hydra.sweeper.sampler._target_=os.system"]},
     "asks for 'hydra.sweeper.sampler._target_"),
    ({"cwd": "/nowhere/at/all"}, "which is not a folder here"),
    ({"sweep_dir": "../elsewhere"}, "is not a plain relative path"),
    ({"sweep_id": "another-sweep"}, "does not lead back to it"),
    ({"overrides": "seed=1"}, "has no overrides to run again"),
    ({"running": {"host": socket.gethostname(), "pid": os.getpid()}}, "is still running here"),
    ({"running": {"host": "elsewhere.example", "pid": 1}}, "if it no longer runs, add --force"),
])  # fmt: skip
def test_a_sweep_that_cannot_resume_is_one_line_and_starts_nothing(
    tmp_path: Path, capsys, fields: dict, message: str
) -> None:
    root = tmp_path / "jobs"
    name = write_record(root, **fields)
    code, _, err = cli(capsys, "resume", name, "--root", str(root))
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in root.iterdir()) == ["sweeps"]  # no job started
    assert not (tmp_path / "multirun").exists() and not Path(MARKER).exists()


def test_another_sweep_in_the_folder_of_one_is_refused_before_it_starts(tmp_path: Path) -> None:
    write_record(tmp_path / "jobs")  # seed=1,2 in multirun/x, started in tmp_path
    other = subprocess.run(
        [sys.executable, "-m", "brevpipe", "run", "-m", *tiny_overrides(tmp_path), "seed=3,4",
         "hydra.sweep.dir=multirun/x"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert other.returncode != 0
    assert "already holds sweep" in other.stderr + other.stdout
    assert sorted(p.name for p in (tmp_path / "jobs").iterdir()) == ["sweeps"]


def test_unknown_sweeps_and_records_are_named(tmp_path: Path, capsys) -> None:
    root = tmp_path / "jobs"
    code, out, _ = cli(capsys, "list", "--root", str(root))
    assert code == 0 and "no sweeps in" in out
    code, _, err = cli(capsys, "show", "nope", "--root", str(root))
    assert code == 1 and "no sweep 'nope' under" in err
    (root / "sweeps").mkdir(parents=True)
    (root / "sweeps" / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = cli(capsys, "resume", f"{root}/sweeps/deep.json")
    assert code == 1 and "is not a sweep record" in err
