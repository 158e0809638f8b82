"""Reading a job's ``output.json`` as untrusted input: for a rerun (:func:`read_output`, which
refuses what is not one) and for listings (:func:`shape_problem`, which notes what is wrong
and lets the listing go on)."""

from __future__ import annotations

import json
from typing import Any

from brevpipe.errors import ConfigError
from brevpipe.io import storage
from brevpipe.jobs.job import STATUSES


def read_output(url: str) -> dict[str, Any]:
    """The output.json at ``url``, checked to be one (clear errors otherwise)."""
    url = storage.normalize(url)
    try:
        data = storage.read_bytes(url)
    except FileNotFoundError:
        raise ConfigError(f"{url} does not exist: give the URL of a job's "
                          "artifacts/output.json.") from None  # fmt: skip
    except OSError as exc:
        raise ConfigError(f"cannot read {url}: {exc}") from None
    try:
        output = json.loads(data)
    except (ValueError, RecursionError):
        raise ConfigError(f"{url} is not JSON: give the URL of a job's "
                          "artifacts/output.json.") from None  # fmt: skip
    if not isinstance(output, dict):
        raise ConfigError(f"{url} is not a brevpipe output.json (not a JSON object).")
    missing = [k for k in ("schema_version", "job", "config", "seed") if k not in output]
    if missing:
        raise ConfigError(f"{url} is not a brevpipe output.json (missing {missing}).")
    if not output.get("pipeline_template"):
        raise ConfigError(f"{url} has no pipeline_template: it was written by an older "
                          "brevpipe; run the job again with brevpipe run.")  # fmt: skip
    job, config = output["job"], output["config"]
    if not (isinstance(job, dict) and isinstance(job.get("id"), str)
            and isinstance(job.get("bucket"), str) and isinstance(config, dict)
            and isinstance(config.get("pipeline"), dict)
            and isinstance(output["pipeline_template"], dict)):  # fmt: skip
        raise ConfigError(f"{url} is not a brevpipe output.json (job.id, job.bucket, "
                          "config.pipeline or pipeline_template missing or of the wrong type).")
    return output


# The fields that listing and statistics read, with the types a job writes (None allowed).
_OUTPUT_SHAPE: dict[str, tuple[type, ...]] = {
    "job": (dict,), "job.id": (str,), "job.name": (str,), "job.pipeline": (str,),
    "job.status": (str,), "job.start": (str,), "job.end": (str,), "metrics": (dict,),
    "config": (dict,), "config.pipeline": (dict,), "pipeline_template": (dict,),
    "stages": (dict,), "history": (list,), "job.resumed": (list,), "choices": (dict,),
    "config.trainer": (dict,), "config.pipeline.key_metric": (str,),
    "pipeline_template.key_metric": (str,), "sweep": (dict,),
}  # fmt: skip


def shape_problem(output: dict[str, Any]) -> str | None:
    """What is wrong with the types of an output.json's fields (None when nothing is): one
    malformed file makes its job ``unknown`` with this note, never breaks a listing."""
    for path, types in _OUTPUT_SHAPE.items():
        node: Any = output
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, types):
            return f"'{path}' is {type(node).__name__}, not {types[0].__name__}"
    if not isinstance(output.get("job"), dict):
        return "no 'job' object"
    if output["job"].get("status") not in (None, *STATUSES):
        return f"'job.status' {str(output['job']['status'])[:40]!r} is not a job status"
    metrics = output.get("metrics") or {}
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in metrics.values()):
        return "'metrics' holds values that are not numbers"
    stages = output.get("stages") or {}
    if not all(isinstance(v, dict) for v in stages.values()):
        return "'stages' holds entries that are not objects"
    return None


def parse_json(
    data: bytes | Exception | None, what: str, missing: str = ""
) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON object read by ``fs.cat(..., on_error="return")``, or ``(None, problem)``."""
    if data is None or isinstance(data, FileNotFoundError):
        return None, f"no {what}" + (f" ({missing})" if missing else "")
    if isinstance(data, Exception):
        return None, f"cannot read {what}: {type(data).__name__}: {data}"
    try:
        parsed = json.loads(data)
    except RecursionError:
        return None, f"{what} is nested too deeply to be a job's file"
    except ValueError as exc:
        return None, f"{what} is not valid JSON ({exc})"
    if not isinstance(parsed, dict):
        return None, f"{what} is not a JSON object"
    return parsed, None
