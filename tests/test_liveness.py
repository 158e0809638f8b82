"""Killed jobs end: SIGTERM stops a job like Ctrl-C; after SIGKILL the heartbeat goes stale and
``brevpipe jobs`` shows the job ``lost``, settles it, archives it, and it resumes; temporary
folders of ended processes are removed."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from brevpipe.commands import jobs
from brevpipe.jobs import records as registry
from brevpipe.jobs.liveness import clean_stale_temp, host_token, is_stale, temp_prefix
from tests.conftest import tiny_overrides


def test_stale_heartbeats_and_temp_folders_of_ended_processes(tmp_path: Path) -> None:
    at = dt.datetime(2026, 1, 1, 12, 0, 10, tzinfo=dt.timezone.utc)
    beat = {"time": "2026-01-01T12:00:00+00:00", "period_s": 4}
    assert not is_stale(beat, at) and is_stale({**beat, "period_s": 3}, at)
    assert not is_stale(None, at) and not is_stale({"time": "garbage"}, at)
    # a beat of another run of the job (a resumed run writes its own) is never the verdict
    assert not is_stale({**beat, "period_s": 3, "session": "old"}, at, session="new")
    assert is_stale({**beat, "period_s": 3, "session": "new"}, at, session="new")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    pid, host = ended.stdout.strip(), host_token()
    dead = tmp_path / f"brevpipe-{pid}-{host}-abcd1234-x"
    mirror = tmp_path / f"brevpipe-mirror-{pid}-{host}-y"
    mine = tmp_path / f"{temp_prefix()}z"
    another_host = tmp_path / f"brevpipe-{pid}-{'0' if host[0] != '0' else '1'}{host[1:]}-x"
    other = tmp_path / "brevpipe-cache"
    for folder in (dead, mirror, mine, another_host, other):
        folder.mkdir()
    assert sorted(clean_stale_temp(str(tmp_path))) == sorted([str(dead), str(mirror)])
    assert mine.exists() and another_host.exists() and other.exists()


def start_job(tmp_path: Path, *extra: str, session: bool = False) -> subprocess.Popen:
    """``brevpipe run`` on tiny data in a child process (``session``: a process group of
    its own); returns once epoch 2 trains."""
    args = [sys.executable, "-m", "brevpipe", "run", *tiny_overrides(tmp_path), *extra]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            start_new_session=session)  # fmt: skip
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        if line.startswith("Epoch 2/"):
            return proc
        assert time.monotonic() < deadline, "the job did not reach epoch 2"
    raise AssertionError(f"the job ended early: {proc.wait()}")


def temp_folders(pid: int) -> list[Path]:
    base = Path(tempfile.gettempdir())
    return [*base.glob(f"brevpipe-{pid}-*"), *base.glob(f"brevpipe-[a-z]*-{pid}-*")]


def listed(root: Path) -> dict[str, dict]:
    return {r.id: r.summary() for r in registry.list_jobs(str(root), include_archived=True)}


@pytest.mark.slow
def test_sigterm_ends_a_job_as_stopped(tmp_path: Path) -> None:
    """SIGTERM to the job's whole process group (systemd, ``kill -- -PGID``): its MLflow
    mirror's process (mirror_worker) outlives it long enough to end the run as KILLED."""
    proc = start_job(tmp_path, "trainer.epochs=200", session=True)
    assert temp_folders(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:]
    assert "terminated (SIGTERM); the job is marked 'stopped'" in out
    (bucket,) = (tmp_path / "jobs").iterdir()
    output = json.loads((bucket / "artifacts" / "output.json").read_text())
    assert output["job"]["status"] == "stopped" and output["job"]["error"] == "terminated (SIGTERM)"
    assert output["stages"]["train"]["status"] == "stopped"
    client = MlflowClient(output["mlflow"]["tracking_uri"])
    assert client.get_run(output["mlflow"]["run_id"]).info.status == "KILLED"
    assert not temp_folders(proc.pid)


@pytest.mark.slow
def test_sigkill_leaves_a_lost_job_that_is_settled_archived_and_resumed(
    tmp_path: Path, capsys
) -> None:
    period = 1.0
    config = ["trainer.epochs=8", f"runtime.heartbeat_s={period}"]
    proc = start_job(tmp_path, *config)
    proc.kill()
    killed = time.monotonic()
    proc.wait(30)
    root = tmp_path / "jobs"
    (job_id,) = listed(root)
    assert temp_folders(proc.pid), "the killed process's scratch folder is left behind"
    while (status := listed(root)[job_id]["status"]) == "running":  # lost after 3 periods
        assert time.monotonic() - killed < 120, "not lost within 120 s (a ceiling, not a goal)"
        time.sleep(0.1)
    assert status == "lost"
    with capsys.disabled():
        print(f"lost {time.monotonic() - killed:.1f} s after SIGKILL (heartbeat every {period} s)")
    assert [r.id for r in registry.list_jobs(str(root), status="lost")] == [job_id]

    assert jobs.main(["stop", job_id, "--root", str(root)]) == 0
    assert "was lost (killed without a word); now marked 'stopped'" in capsys.readouterr().out
    output = json.loads((root / job_id / "artifacts" / "output.json").read_text())
    assert output["job"]["status"] == "stopped" and output["job"]["error"].startswith("lost:")
    assert output["stages"]["train"]["status"] == "stopped"
    client = MlflowClient(output["mlflow"]["tracking_uri"])
    assert client.get_run(output["mlflow"]["run_id"]).info.status == "KILLED"
    assert jobs.main(["archive", job_id, "--root", str(root)]) == 0
    assert jobs.main(["unarchive", job_id, "--root", str(root)]) == 0

    resumed = subprocess.run(
        [sys.executable, "-m", "brevpipe", "run", *tiny_overrides(tmp_path), *config,
         f"job.id={job_id}"], capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    output = json.loads((root / job_id / "artifacts" / "output.json").read_text())
    assert output["job"]["status"] == "completed" and len(output["history"]) == 8
    assert listed(root)[job_id]["status"] == "completed"
    assert not temp_folders(proc.pid), "the next job removed the killed one's scratch folder"
