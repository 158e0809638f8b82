"""The stage contract, watched while both pipelines run: a stage reads from the job bucket only
its own folder, what it wrote itself, and the URLs its declared inputs hand it; never another
stage's files or output.json. (The runner's signature check covers what a stage is handed.)"""

from __future__ import annotations

import functools
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from brevpipe.api import run_job
from brevpipe.engine import runner
from brevpipe.io import storage
from tests.conftest import compose_config
from tests.test_segmentation_pipeline import segmentation_config

pytestmark = pytest.mark.slow


# the job's own code, acting for a stage through its context (its stop callback reads the session)
JOB_CODE = tuple(str(Path(runner.__file__).parent.parent / room) for room in ("engine", "jobs"))


def called_by_the_engine() -> bool:
    """Whether the code that made this read is the engine's (the stop callback a stage got from
    its context reads the job's session), not the stage's or the data layer's."""
    frame = sys._getframe(2)  # above read() and this function
    while frame is not None and frame.f_code.co_filename == storage.__file__:
        frame = frame.f_back
    return frame is not None and frame.f_code.co_filename.startswith(JOB_CODE)


def urls_in(value: Any) -> set[str]:
    """Every string inside a stage input (a dict of URLs, a list...)."""
    if isinstance(value, str):
        return {storage.normalize(value)}
    if isinstance(value, dict):
        return set().union(*map(urls_in, value.values())) if value else set()
    if isinstance(value, list | tuple):
        return set().union(*map(urls_in, value)) if value else set()
    return set()


class Audit:
    """Which bucket URLs each stage read and wrote while its function ran."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.stage: tuple[str, set[str]] | None = None
        self.reads: dict[str, list[str]] = defaultdict(list)
        self.writes: dict[str, set[str]] = defaultdict(set)
        self.refused: list[str] = []
        load = runner.stage_function
        monkeypatch.setattr(runner, "stage_function", lambda spec: self.watch(spec, load(spec)))
        for name in ("read_bytes", "cat_many", "download"):
            monkeypatch.setattr(storage, name, self.reading(getattr(storage, name)))
        for name in ("write_bytes", "upload", "write_many"):
            monkeypatch.setattr(storage, name, self.writing(getattr(storage, name)))

    def watch(self, spec: Any, function: Any) -> Any:
        @functools.wraps(function)
        def run(ctx: Any, **kwargs: Any) -> Any:
            handed = urls_in([kwargs[name] for name in spec.inputs])
            self.stage = (ctx.name, handed)
            try:
                return function(ctx, **kwargs)
            finally:
                self.stage = None

        return run

    def reading(self, function: Any) -> Any:
        def read(urls: Any, *args: Any, **kwargs: Any) -> Any:
            if self.stage is not None and not called_by_the_engine():
                name, handed = self.stage
                for url in [urls] if isinstance(urls, str | Path) else list(urls):
                    url = storage.normalize(str(url))
                    self.reads[name].append(url)
                    own = f"/artifacts/stages/{name}/" in url or url in self.writes[name]
                    if "/artifacts/" in url and not own and url not in handed:
                        self.refused.append(f"{name} read {url}")
            return function(urls, *args, **kwargs)

        return read

    def writing(self, function: Any) -> Any:
        def write(*args: Any, **kwargs: Any) -> Any:
            if self.stage is not None:
                targets = args[0] if function.__name__ == "write_many" else [args[-1]]
                self.writes[self.stage[0]].update(storage.normalize(str(u)) for u in targets)
            return function(*args, **kwargs)

        return write


@pytest.mark.parametrize("pipeline", ["classification", "segmentation"])
def test_every_stage_reads_only_its_own_files_and_declared_inputs(
    pipeline: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import tiny_overrides

    audit = Audit(monkeypatch)
    if pipeline == "classification":
        cfg = compose_config([*tiny_overrides(tmp_path), "tracking=none", "trainer.epochs=1",
                              "loader.on_error=skip"])  # fmt: skip
    else:
        cfg = segmentation_config(tmp_path, "tracking=none", "trainer.epochs=1")
    job = run_job(cfg)
    assert job.status == "completed"
    assert audit.refused == [], audit.refused
    ran = set(job.stages)
    assert ran >= {"samples", "split", "train", "evaluate", "report"}
    # the audit saw the reads it checks: the report reads images its inputs name
    assert audit.reads["report"], dict(audit.reads)


def peeking_split(ctx: Any, samples: Any, **params: Any) -> dict[str, Any]:
    """A split that reads the samples stage's artifact behind its declaration's back."""
    storage.read_bytes(ctx.artifact("samples.csv"))
    return {"split_samples": samples}


def test_the_audit_catches_a_stage_reading_another_stages_file(tiny_config, monkeypatch) -> None:
    audit = Audit(monkeypatch)
    only_split = [f"~pipeline.stages.{name}" for name in
                  ("train", "evaluate", "preview", "export", "report")]  # fmt: skip
    run_job(tiny_config("tracking=none", *only_split,
                        "pipeline.stages.split._target_=tests.test_stage_contract.peeking_split"))
    assert [line.rsplit("/", 1)[-1] for line in audit.refused] == ["samples.csv"]
