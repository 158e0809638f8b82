"""The README's examples run as written."""

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

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_block(first_line: str) -> str:
    """The README's fenced code block whose first line is ``first_line``."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), flags=re.S):
        if block.splitlines()[0] == first_line:
            return block
    raise AssertionError(f"no code block starting {first_line!r} in README.md")


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
