"""The README's and the docs' examples run as written; the docs site builds, strictly."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import tiny_overrides

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]


def readme_block(first_line: str) -> str:
    """The fenced code block of the README or a docs page whose first line is ``first_line``."""
    for page in PAGES:
        for block in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), flags=re.S):
            if block.splitlines()[0] == first_line:
                return block
    raise AssertionError(f"no code block starting {first_line!r} in README.md or docs/")


def test_the_readme_is_what_a_newcomer_needs_first_and_links_every_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 150
    assert text.splitlines()[3:5] == ["make run    # installs into .venv if needed, then trains "
                                      "the default pipeline on the built-in shapes dataset",
                                      "make test   # installs into .venv if needed, then runs "
                                      "the test suite"]  # fmt: skip
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in text, page.name


def test_the_docs_site_builds_strictly_with_its_generated_references(tmp_path: Path) -> None:
    """What ``make docs`` runs: ``mkdocs build --strict`` (a broken link, anchor or nav entry
    fails it), with the settings and command-line references generated."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d",
                           str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    settings = (tmp_path / "site" / "reference" / "settings" / "index.html").read_text()
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    assert "runtime.deterministic" in settings and "model:small_cnn" in settings
    assert "brevpipe completion" in cli and "--allow-data-change" in cli
    assert not (REPO / "docs" / "reference").exists(), "generated pages stay out of docs/"


def test_the_settings_reference_covers_every_setting_brevpipe_schema_prints() -> None:
    import importlib.util

    from brevpipe.config.composed import schema_of

    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = hooks.settings_reference()
    schema = schema_of(None)
    expected = []
    for name, prop in schema["properties"].items():
        if "anyOf" in prop:
            for ref in prop["anyOf"]:
                component = schema["$defs"][ref["$ref"].rsplit("/", 1)[1]]
                assert f"#### `{component['properties']['_target_']['default']}`" in page
                expected += [f"`{name}.{key}`" for key in component["properties"]
                             if key not in ("_target_", "_partial_")]  # fmt: skip
        elif "properties" in prop:
            expected += [f"`{name}.{key}`" for key in prop["properties"]]
        else:
            expected.append(f"### `{name}`")
    assert len(expected) > 80
    assert [e for e in expected if e not in page] == []


@pytest.mark.slow
def test_the_readme_python_example_runs(tmp_path: Path) -> None:
    """The README's `brevpipe.api` example, as written (its job root under /tmp: removed)."""
    import shutil

    block = readme_block("from brevpipe.api import compose, run_job")
    root = Path("/tmp/brevpipe-readme")
    shutil.rmtree(root, ignore_errors=True)
    try:
        done = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True,
                              cwd=tmp_path, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        status, accuracy, bucket = done.stdout.split()[-3:]
        assert status == "completed" and 0.0 <= float(accuracy) <= 1.0
        assert Path(bucket, "artifacts", "output.json").exists()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_the_readme_thumbnails_stage_takes_one_function_and_one_yaml_entry(tmp_path: Path) -> None:
    (tmp_path / "acme").mkdir()
    (tmp_path / "acme" / "__init__.py").write_text("")
    (tmp_path / "acme" / "stages.py").write_text(readme_block("# acme/stages.py"))
    (tmp_path / "conf" / "pipeline").mkdir(parents=True)
    (tmp_path / "conf" / "pipeline" / "thumbnails.yaml").write_text(
        readme_block("# conf/pipeline/thumbnails.yaml: classification and one more stage")
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()])}
    command = [sys.executable, "-m", "brevpipe", "run", "--config-dir", str(tmp_path / "conf"),
               "pipeline=thumbnails", *tiny_overrides(tmp_path), "tracking=none"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    bucket = re.search(r"bucket:\s+(\S+)", result.stdout).group(1)
    output = json.loads(Path(bucket, "artifacts", "output.json").read_text())
    assert output["job"]["status"] == "completed"
    assert output["stages"]["thumbnails"]["status"] == "completed"
    assert set(output["stages"]) >= {"samples", "split", "train", "evaluate", "report"}
    recorded = json.loads(Path(bucket, "artifacts", "stages", "thumbnails", "thumbnails.json")
                          .read_text())  # fmt: skip
    assert recorded == {"images": 16, "size": 48}
    with Image.open(Path(bucket, "artifacts", "thumbnails.png")) as sheet:
        assert sheet.size == (16 * 48, 48)
        assert len(set(sheet.getdata())) > 2, "the sheet holds pictures, not a blank"
