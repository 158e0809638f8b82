"""What ``brevpipe jobs show`` and ``brevpipe jobs statistics`` say about one job: its key
settings, stages and artifacts, and the progress of a running one."""

from __future__ import annotations

from typing import Any

from brevpipe.io import storage
from brevpipe.jobs.control import read_stop
from brevpipe.jobs.layout import JobBucket
from brevpipe.jobs.output_json import parse_json
from brevpipe.jobs.records import JobRecord

DONE_STAGE_STATUSES = ("completed", "cached")
KEY_PARAMS = (
    "dataset.name", "dataset.url", "split.fractions", "sampler._target_", "loader.target_size",
    "augmenter._target_", "encoder._target_", "model._target_", "trainer.epochs",
    "trainer.batch_size", "trainer.lr", "trainer.schedule", "runtime.deterministic",
)  # fmt: skip


def dotted(config: dict[str, Any], key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def artifact_files(bucket: str) -> list[dict[str, Any]]:
    """``artifacts/`` files of a bucket, ``{"path", "size"}`` relative to it (sorted)."""
    fs, path = storage.get_fs(JobBucket(bucket).artifact())
    fs.invalidate_cache(path)
    found = fs.find(path, detail=True)
    base = path.rstrip("/") + "/"
    return [
        {"path": name[len(base):] if name.startswith(base) else name, "size": info.get("size")}
        for name, info in sorted(found.items())
        if ".tmp-" not in name
    ]  # fmt: skip


def describe(record: JobRecord) -> dict[str, Any]:
    """What ``show`` prints: config summary, metrics, stages, artifacts, MLflow run."""
    output = record.output or {}
    config = record.config
    params = {k: v for k in KEY_PARAMS if (v := dotted(config, k)) is not None}
    stages = [
        {
            "name": name,
            "status": record.stage_status(stage),
            "cached": stage.get("status") == "cached",
            "seconds": stage.get("seconds"),
        }
        for name, stage in (output.get("stages") or {}).items()
    ]
    name, value = record.key_metric
    return {
        **record.summary(),
        "error": record.job.get("error"),
        "config": {
            "choices": output.get("choices") or {},
            "seed": output.get("seed"),
            "key_metric": name,
            "params": params,
        },
        "metrics": output.get("metrics") or {},
        "dataset_record": output.get("dataset") if isinstance(output.get("dataset"), dict)
        else {},
        "stages": stages,
        "artifacts": artifact_files(record.bucket),
        "mlflow": output.get("mlflow") or {},
        "registry": record.registry,
        "stop_request": read_stop(record.bucket),
    }


def statistics(record: JobRecord) -> dict[str, Any]:
    """Progress of a running or finished job, from its output.json (rewritten by the runner
    at every stage end and every epoch) and its stages' ``stage.json`` markers."""
    output = record.output or {}
    history = output.get("history") or []
    epochs_total = dotted(record.config, "trainer.epochs")
    epochs_done = max((int(h.get("epoch", 0)) for h in history), default=0)
    recorded = output.get("stages") or {}
    declared = list(dotted(record.config, "pipeline.stages") or {}) or list(recorded)
    names = declared + [n for n in recorded if n not in declared]
    markers = _stage_markers(record.bucket, [n for n in names if n in recorded])
    stages = []
    for name in names:
        stage = recorded.get(name) or {}
        marker = (markers.get(name) or {}).get("recorded") or {}
        metrics = dict(marker.get("metrics") or {})
        if not metrics and marker.get("history"):
            metrics = {k: v for k, v in marker["history"][-1].items() if k != "epoch"}
        stages.append({
            "name": name, "status": record.stage_status(stage),
            "seconds": stage.get("seconds"), "metrics": metrics,
        })  # fmt: skip
    done = sum(s["status"] in DONE_STAGE_STATUSES for s in stages)
    latest = dict(history[-1]) if history else {}
    return {
        "id": record.id,
        "status": record.status,
        "pipeline": record.pipeline,
        "elapsed_s": record.duration_s,
        "epoch": epochs_done,
        "num_epochs": epochs_total,
        "epoch_progress": _percent(epochs_done, epochs_total),
        "stages_done": done,
        "stages_total": len(stages),
        "stage_progress": _percent(done, len(stages)),
        "latest_epoch": latest,
        "stages": stages,
        "metrics": output.get("metrics") or {},
    }


def _percent(done: int, total: Any) -> float | None:
    return round(100.0 * min(done, total) / total, 1) if isinstance(total, int) and total else None


def _stage_markers(bucket: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """The runner's ``stage.json`` markers of the given stages, read concurrently."""
    if not names:
        return {}
    fs, path = storage.get_fs(bucket)
    paths = {n: JobBucket(path).stage_marker(n) for n in names}
    contents = fs.cat(list(paths.values()), on_error="return")
    markers = {}
    for name, stage_path in paths.items():
        parsed, _ = parse_json(contents.get(fs._strip_protocol(stage_path)), "stage.json")
        if parsed is not None:
            markers[name] = parsed
    return markers


def format_duration(seconds: float | None) -> str:
    """A duration as people read it: ``45s``, ``3m 07s``, ``2h 05m``, ``1d 3h``."""
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def format_value(value: Any) -> str:
    """A metric or setting for a table: floats to 4 significant digits, None as ``-``."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)
