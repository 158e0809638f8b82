"""The stage contract: what a stage function gets besides its inputs and parameters.

A stage is a function ``(ctx: StageContext, **inputs, **params) -> {output name: value}``,
declared in a pipeline YAML with its ``inputs`` (other stages' outputs) and ``outputs``. The
runner saves the outputs under ``artifacts/stages/<stage>/`` and hands them to later stages;
a stage reads nothing of another stage but its declared inputs: not its files, not what it
reported to the job (metrics, sections). What a stage knows of the job is its identity
(:attr:`StageContext.job_id`, :attr:`~StageContext.bucket`, :meth:`~StageContext.summary`);
what it reports goes through the context (:meth:`~StageContext.add_metric`,
:meth:`~StageContext.add_epoch`, :meth:`~StageContext.set_section`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from brevpipe.engine.seeding import component_seed
from brevpipe.jobs.job import Job
from brevpipe.jobs.layout import JobBucket


@dataclass
class StageContext:
    """What a stage function gets besides its inputs and parameters.

    ``seed`` is the stage's own seed; :meth:`seed_for` gives a component's. ``url`` is the
    stage's folder in the job bucket; :meth:`artifact` a path under the job's ``artifacts/``.
    """

    _job: Job  # the runner's: a stage reads the job only through the methods below
    name: str
    seed: int
    url: str  # the stage's folder in the job bucket
    verbose: str | int = "auto"
    key: str = ""  # the stage's cache key
    inputs: tuple[str, ...] = ()  # the declared inputs and outputs of the stage
    outputs: tuple[str, ...] = ()
    recorded: dict[str, Any] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # after outputs are saved
    notes: dict[str, Any] = field(default_factory=dict)  # go into output.json's stage entry

    def seed_for(self, component: str) -> int:
        """The seed of a component: one rule for every stage (:func:`component_seed`)."""
        return component_seed(self._job.seed, component)

    @property
    def job_id(self) -> str:
        return self._job.id

    @property
    def bucket(self) -> JobBucket:
        """Every path of the job's bucket (:class:`brevpipe.jobs.layout.JobBucket`)."""
        return self._job.bucket

    def summary(self) -> dict[str, Any]:
        """The job's identity for a report: pipeline, id, bucket, start time, root seed."""
        job = self._job
        return {"pipeline": job.pipeline, "job": job.id, "bucket": job.bucket_url,
                "started": job.start_time, "seed": job.seed}  # fmt: skip

    def artifact(self, *parts: str) -> str:
        """A path under the job's ``artifacts/`` (what users open: report.html, model/...)."""
        return self._job.bucket.artifact(*parts)

    def temp_path(self, *parts: str) -> str:
        """A local scratch path of the job (not persisted); its parent folder exists."""
        return self._job.temp_path(*parts)

    def stop_callback(self, check_every_s: float = 2.0) -> Any:
        """A Keras callback that ends ``fit`` when ``brevpipe jobs stop`` asks this job to
        (looking at most every ``check_every_s`` seconds)."""
        from brevpipe.jobs.control import stop_callback

        return stop_callback(self._job.bucket_url, check_every_s)

    def add_metric(self, name: str, value: float) -> None:
        self._job.add_metric(name, value)
        self.recorded.setdefault("metrics", {})[name] = float(value)

    def add_metrics(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.add_metric(name, value)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The epochs this stage recorded (:meth:`add_epoch`), a resumed job's earlier ones too:
        what a training stage hands on as its ``history`` output."""
        return [dict(row) for row in self.recorded.get("history", [])]

    def add_epoch(self, epoch: int, logs: dict[str, float]) -> None:
        self._job.add_epoch(epoch, logs)
        self.recorded.setdefault("history", []).append({"epoch": epoch, **logs})
        self._job.write_output()

    def set_section(self, key: str, value: dict[str, Any]) -> None:
        """Fill an output.json section (``samples``, ``model``, or one of its own) from this
        stage."""
        _set_section(self._job, key, value)
        self.recorded.setdefault("sections", {})[key] = value

    def add_skipped(self, urls: list[str]) -> None:
        """Count unreadable images this stage left out (``loader.on_error=skip``) in
        output.json's ``samples`` section, beside those earlier stages counted."""
        section = dict(self._job.samples)
        skipped = sorted({*section.get("skipped_urls", []), *urls})
        self.set_section("samples", {**section, "skipped": len(skipped), "skipped_urls": skipped})

    def replay(self, recorded: dict[str, Any]) -> None:
        """Give the job what a cached run of this stage reported."""
        for row in recorded.get("history", []):
            self._job.add_epoch(row["epoch"], {k: v for k, v in row.items() if k != "epoch"})
        self._job.add_metrics(recorded.get("metrics", {}))
        for key, value in recorded.get("sections", {}).items():
            _set_section(self._job, key, value)


SECTIONS = ("samples", "dataset", "model")  # the Job's own; others go to its extra sections


def _set_section(job: Job, key: str, value: dict[str, Any]) -> None:
    if key in SECTIONS:
        setattr(job, key, value)
    else:
        job.extra[key] = value
