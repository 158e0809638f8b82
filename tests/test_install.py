"""brevpipe as an installed framework: the wheel (conf/ inside) in a fresh venv
outside the repository, a user project made by ``brevpipe init`` with its own component
registered by entry point, an exact rerun, and the refusal once the component is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from brevpipe.commands.init import write_project

REPO = Path(__file__).resolve().parents[1]


def test_init_writes_a_project_and_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    files = write_project(tmp_path / "Acme Vision")
    names = sorted(p.relative_to(tmp_path / "Acme Vision").as_posix() for p in files)
    assert names == [
        "README.md", "acme_vision/__init__.py", "acme_vision/components.py",
        "acme_vision/models.py", "conf/model/my_net.yaml", "pyproject.toml",
    ]  # fmt: skip
    pyproject = (tmp_path / "Acme Vision" / "pyproject.toml").read_text()
    assert '[project.entry-points."brevpipe.components"]' in pyproject
    assert 'acme_vision = "acme_vision.components:register"' in pyproject
    with pytest.raises(FileExistsError, match="not empty"):
        write_project(tmp_path / "Acme Vision")


def run(command: list, cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=1500)  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def outputs(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("*/artifacts/output.json"))]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_wheel_user_project_run_rerun_and_refusal(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["BREVPIPE_CACHE_DIR"] = str(tmp_path / "datasets")
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    venv, dist = tmp_path / "venv", tmp_path / "dist"
    python, brevpipe = venv / "bin" / "python", venv / "bin" / "brevpipe"
    # uv (installed by `make install`) builds, makes the venv and takes the dependencies from
    # its cache in seconds; pip does the same where uv is missing
    uv = Path(sys.executable).parent / "uv"
    if uv.exists():
        run([uv, "build", "-q", "--wheel", "--out-dir", dist, REPO], tmp_path, env)
        run([uv, "venv", "-q", "--python", sys.executable, venv], tmp_path, env)
        install = [uv, "pip", "install", "-q", "--compile-bytecode", "--python", python]
    else:
        run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, REPO],
            tmp_path, env)  # fmt: skip
        run([sys.executable, "-m", "venv", venv], tmp_path, env)
        install = [python, "-m", "pip", "install", "-q"]
    wheel = next(dist.glob("brevpipe-*.whl"))
    run([*install, wheel], tmp_path, env)  # dependencies from PyPI

    run([brevpipe, "init", tmp_path / "acme"], tmp_path, env)
    project = tmp_path / "acme"
    run([*install, "--no-deps", project], tmp_path, env)
    listed = run([brevpipe, "schema", "--components"], project, env).stdout
    assert any(line.split()[:3] == ["model", "my_net", "acme.models.build"]
               for line in listed.splitlines())  # fmt: skip
    schema = json.loads(run([brevpipe, "schema", "model=my_net", "--config-dir", "conf"],
                            project, env).stdout)  # fmt: skip
    assert schema["properties"]["width"] == {"type": "integer", "default": 8,
                                             "description": "filters of the first block"}

    jobs = tmp_path / "jobs"
    tiny = ["trainer.epochs=1", "trainer.batch_size=8", "dataset.samples_per_class=8",
            "dataset.image_size=32", "loader.target_size=[32,32]", f"job.root={jobs}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]  # fmt: skip
    run([brevpipe, "run", "--config-dir", "conf", "model=my_net", *tiny], project, env)
    [first] = outputs(jobs)
    assert first["job"]["status"] == "completed"
    assert first["config"]["model"]["_target_"] == "model:my_net"  # its public name
    assert first["config"]["model"]["width"] == 8
    url = jobs / first["job"]["id"] / "artifacts" / "output.json"
    run([brevpipe, "rerun", url], tmp_path, env)
    rerun = next(o for o in outputs(jobs) if o["job"]["id"] != first["job"]["id"])
    assert rerun["metrics"] == first["metrics"] and rerun["history"] == first["history"]

    uninstall = [uv, "pip", "uninstall", "-q", "--python", python] if uv.exists() else \
        [python, "-m", "pip", "uninstall", "-y", "-q"]  # fmt: skip
    run([*uninstall, "acme"], tmp_path, env)
    refused = run([brevpipe, "rerun", url], tmp_path, env, check=False)
    assert refused.returncode == 1, refused.stderr
    assert "refusing model._target_: 'model:my_net' is not a registered component" in (
        refused.stderr) and "Install the package that registers model:my_net" in refused.stderr
    assert "Traceback" not in refused.stderr and len(outputs(jobs)) == 2
