"""A job root on a small tmpfs that fills up during training: the job fails with one line
naming the root and the space needed, output.json stays its last complete version, nothing is
half-written, and ``job.id=...`` resumes the job once there is space. Mounting needs root (CI
runs as root); elsewhere the test skips, saying so."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from brevpipe.engine.runner import run_job
from brevpipe.errors import DiskFullError
from tests.conftest import compose_config, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_job_root_fails_clearly_and_resumes_once_there_is_space(
    tmp_path: Path, small_disk: Path
) -> None:
    switch = tmp_path / "fill-once"
    switch.touch()
    root = small_disk / "jobs"
    overrides = [
        *(o for o in tiny_overrides(tmp_path) if not o.startswith("job.root=")),
        f"job.root={root}", "tracking=none", "trainer.epochs=3",
        f"trainer.callbacks=[{{_target_:tests.helpers.FillDiskAtEpoch,folder:'{small_disk}',"
        f"switch:'{switch}',epoch:1}}]",
    ]  # fmt: skip
    with pytest.raises(DiskFullError) as failure:
        run_job(compose_config(overrides))
    message = str(failure.value)
    print(f"\n{message}")
    (bucket,) = root.iterdir()
    assert f"job root {root} is full" in message and "bytes free" in message
    assert f"brevpipe run job.id={bucket.name}" in message and "\n" not in message
    output = json.loads((bucket / "artifacts" / "output.json").read_text())  # complete JSON
    assert output["job"]["id"] == bucket.name
    assert not [p for p in bucket.rglob("*") if ".tmp-" in p.name], "nothing half-written"

    (small_disk / "filler").unlink()  # space again
    job = run_job(compose_config([*overrides, f"job.id={bucket.name}"]))
    assert job.status == "completed"
    assert [row["epoch"] for row in job.history] == [1, 2, 3]
    assert json.loads((bucket / "artifacts" / "output.json").read_text())["job"]["status"] == \
        "completed"  # fmt: skip
