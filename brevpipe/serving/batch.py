"""``brevpipe predict MODEL IMAGES...``: score image files with an exported model.

MODEL is an exported archive URL (``.../artifacts/model/saved_model.tar.gz``), a job bucket URL,
a job id (under ``--job-root``) or an MLflow model URI (``runs:/<run_id>/mlflow_model``,
``models:/<name>/<version>``, ``models:/<name>@<alias>``). IMAGES are files, globs or folders on
any fsspec file system. Images go through the model's own :class:`ImageLoader` (the one training
used), so the preprocessing cannot drift. TensorFlow and MLflow are imported only when needed.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brevpipe.engine import storage
from brevpipe.engine.liveness import temp_prefix
from brevpipe.errors import BrevpipeError, ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

    from brevpipe.serving.predictor import Predictor

ARCHIVE = "artifacts/model/saved_model.tar.gz"  # inside a job bucket
RUN_ARCHIVE = "model/saved_model.tar.gz"  # inside an MLflow run's artifacts (tracking.py)
BUCKET_TAG = "brevpipe.bucket"  # the MLflow run tag naming the job bucket (tracking.py)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # as training (samples.py)
FORMATS = ("csv", "json")
_GLOB_CHARS = "*?["

MODEL_HELP = (
    "give an archive URL (.../artifacts/model/saved_model.tar.gz), a job bucket URL, a job id "
    "under --job-root, or an MLflow model URI (runs:/<run_id>/mlflow_model, models:/<name>/<v>)"
)


# -- the model -----------------------------------------------------------------------------
def resolve_model(
    model: str, job_root: str = "./jobs", tracking_uri: str | None = None
) -> Predictor:
    """The :class:`Predictor` for MODEL (archive URL, job bucket, job id or MLflow URI)."""
    from brevpipe.serving.predictor import load_predictor

    return load_predictor(model_archive_url(model, job_root, tracking_uri))


def model_archive_url(model: str, job_root: str = "./jobs", tracking_uri: str | None = None) -> str:
    """The URL (or local path) of the ``saved_model.tar.gz`` that MODEL names.

    An MLflow URI leads to its run; the run's ``brevpipe.bucket`` tag to the job bucket and its
    archive. When that bucket is gone or unreachable, the copy of the archive that brevpipe
    logged into the run's artifacts (``model/saved_model.tar.gz``) is downloaded instead.
    """
    if model.startswith(("runs:/", "models:/")):
        return _archive_from_mlflow(model, job_root, tracking_uri)
    if model.endswith(".tar.gz"):
        return storage.normalize(model)
    location = storage.normalize(model)
    candidates = (storage.join(location, ARCHIVE), storage.join(location, "saved_model.tar.gz"))
    for candidate in candidates:
        if _exists(candidate):
            return candidate
    if "/" not in model and "://" not in model:  # a job id (or a unique prefix of one)
        return _archive_of_job_id(model, storage.normalize(job_root))
    raise ConfigError(f"{model} holds no exported model (no {ARCHIVE}): {MODEL_HELP}.")


def _exists(url: str) -> bool:
    try:
        return storage.exists(url)
    except Exception:  # noqa: BLE001 - an unreachable store means "not there" here
        return False


def _archive_of_job_id(job_id: str, root: str) -> str:
    if _exists(storage.join(root, job_id)):
        matches = [job_id]
    else:
        try:
            fs, path = storage.get_fs(root)
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
        except Exception:  # noqa: BLE001
            names = []
        matches = sorted(n for n in names if n.startswith(job_id))
    if not matches:
        raise ConfigError(f"no job {job_id!r} under {root} (see brevpipe jobs list --root "
                          f"{root}); pass --job-root, or {MODEL_HELP}.")  # fmt: skip
    if len(matches) > 1:
        raise ConfigError(f"job id {job_id!r} is ambiguous under {root}: "
                          f"{', '.join(matches[:5])}; give more characters.")  # fmt: skip
    bucket = storage.join(root, matches[0])
    archive = storage.join(bucket, ARCHIVE)
    if not _exists(archive):
        status = "unknown"
        with contextlib.suppress(Exception):
            status = storage.read_json(storage.join(bucket, "artifacts/output.json"))["job"][
                "status"
            ]
        raise ConfigError(f"job {matches[0]} (status {status}) has no exported model at "
                          f"{archive}: it did not reach the export stage; run it to the end "
                          "(brevpipe run job.id=<id> ...) or pick another job.")  # fmt: skip
    return archive


def _archive_from_mlflow(uri: str, job_root: str, tracking_uri: str | None) -> str:
    import tempfile

    parse_mlflow_uri(uri)  # a malformed URI fails before MLflow is imported

    import mlflow.artifacts
    from mlflow import MlflowClient

    from brevpipe.integrations.tracking import default_tracking_uri

    tracking_uri = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                    or default_tracking_uri(storage.normalize(job_root)))  # fmt: skip
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    run_id = _run_id_of(client, uri, tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{uri}: MLflow run {run_id} not found in {tracking_uri} "
                          f"({type(exc).__name__}); pass --tracking-uri.") from None  # fmt: skip
    bucket = run.data.tags.get(BUCKET_TAG)
    if bucket and _exists(storage.join(bucket, ARCHIVE)):
        return storage.join(bucket, ARCHIVE)
    download = tempfile.mkdtemp(prefix=temp_prefix("mlflow"))
    atexit.register(shutil.rmtree, download, ignore_errors=True)
    try:
        return mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=RUN_ARCHIVE, tracking_uri=tracking_uri,
            dst_path=download,
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        where = (f"its job bucket {bucket} has no {ARCHIVE}" if bucket
                 else f"it has no {BUCKET_TAG} tag")  # fmt: skip
        raise ConfigError(f"{uri}: MLflow run {run_id} is not a usable brevpipe job: {where} and "
                          f"its artifacts hold no {RUN_ARCHIVE} ({type(exc).__name__}); give the "
                          "archive URL instead.") from None  # fmt: skip


def parse_mlflow_uri(uri: str) -> tuple[str, str, str]:
    """``("run", run_id, "")``, ``("version", name, number|"latest")`` or ``("alias", name,
    alias)``; checked before MLflow is imported."""
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").strip("/").split("/", 1)[0]
        if not run_id:
            raise ConfigError(f"{uri}: write runs:/<run_id>/mlflow_model.")
        return "run", run_id, ""
    rest = uri.removeprefix("models:/").strip("/")
    name, _, alias = rest.partition("@")
    if name and alias:
        return "alias", name, alias
    name, _, number = rest.partition("/")
    if name and (number == "latest" or number.isdigit()):
        return "version", name, number
    raise ConfigError(f"{uri}: use models:/<name>/<version>, models:/<name>/latest or "
                      "models:/<name>@<alias> (stages are not supported).")  # fmt: skip


def _run_id_of(client: Any, uri: str, tracking_uri: str) -> str:
    """The run id of ``runs:/<id>/...`` or of a registered model version ``models:/...``."""
    kind, name, ref = parse_mlflow_uri(uri)
    if kind == "run":
        return name
    try:
        if kind == "alias":
            version = client.get_model_version_by_alias(name, ref)
        elif ref == "latest":
            found = client.search_model_versions(f"name='{name}'")
            if not found:
                raise LookupError(f"no versions of {name}")
            version = max(found, key=lambda v: int(v.version))
        else:
            version = client.get_model_version(name, ref)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{uri}: no such registered model version in {tracking_uri} ("
                          f"{type(exc).__name__}); pass --tracking-uri or check the name."
                          ) from None  # fmt: skip
    if not version.run_id:
        raise ConfigError(f"{uri} was not registered from an MLflow run: give the archive URL.")
    return version.run_id


# -- the images ----------------------------------------------------------------------------
def expand_images(patterns: Sequence[str]) -> list[str]:
    """Image URLs for files, globs (``data/*.png``, ``s3://b/x/**/*.jpg``) and folders.

    Folders and globs yield the files with an image extension (png, jpg, jpeg, bmp, tif, tiff,
    any case), sorted; a file named directly is taken as it is. Order follows the patterns;
    duplicates are dropped. A pattern that matches nothing is an error naming it.
    """
    urls: list[str] = []
    for pattern in patterns:
        found = _expand_one(pattern)
        if not found:
            raise DataError(f"no images match {pattern!r}: check the path (folders and globs "
                            f"take files ending in {', '.join(IMAGE_EXTENSIONS)}).")  # fmt: skip
        urls.extend(found)
    return list(dict.fromkeys(urls))


def _expand_one(pattern: str) -> list[str]:
    fs, path = storage.get_fs(pattern)
    local = storage.is_local(pattern)

    def url(p: str) -> str:
        return p if local else fs.unstrip_protocol(p)

    def is_image(p: str) -> bool:
        return p.lower().endswith(IMAGE_EXTENSIONS)

    try:
        if any(c in path for c in _GLOB_CHARS):
            matches = fs.glob(path, detail=True)
            return sorted(url(p) for p, info in matches.items()
                          if info.get("type") != "directory" and is_image(p))  # fmt: skip
        if fs.isdir(path):
            files = fs.find(path)
            return sorted(url(p) for p in files if is_image(p))
        if fs.isfile(path):
            return [url(path)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise DataError(f"cannot list {pattern!r}: {exc}") from None
    return []


# -- scoring -------------------------------------------------------------------------------
def predict_images(
    predictor: Predictor,
    urls: Sequence[str],
    batch_size: int = 32,
    *,
    on_error: str = "raise",
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """One row per image: ``path``, ``predicted``, ``score_<class>``... (``predict_urls``).

    A file that cannot be read or decoded raises a :class:`DataError` naming it; with
    ``on_error="skip"`` it is left out and listed in ``table.attrs["skipped"]`` as
    ``(url, reason)``. ``progress(done, total)`` is called after every batch.
    """
    if on_error not in ("raise", "skip"):
        raise ConfigError(f"on_error={on_error!r}: use raise or skip.")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size}: use 1 or more.")
    urls = list(urls)
    if not urls:
        raise DataError("no images to score.")
    try:
        table = _score(predictor, urls, batch_size, progress)
        table.attrs["skipped"] = []
        return table
    except BrevpipeError:
        raise
    except Exception:
        bad = predictor.loader.find_unreadable(urls)  # which file, and why
        if not bad:
            raise
    if on_error == "raise":
        listing = "; ".join(f"{url} ({reason})" for url, reason in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise DataError(f"{len(bad)} image(s) cannot be decoded: {listing}{more}. Fix or remove "
                        "them, or pass --on-error skip (on_error='skip') to leave them out.")
    skipped = {url for url, _ in bad}
    keep = [u for u in urls if u not in skipped]
    if not keep:
        raise DataError(f"none of the {len(urls)} images can be decoded (first: {bad[0][0]}: "
                        f"{bad[0][1]}).")  # fmt: skip
    table = _score(predictor, keep, batch_size, progress)
    table.attrs["skipped"] = bad
    return table


def _score(predictor: Predictor, urls: list[str], batch_size: int,
           progress: Callable[[int, int], None] | None) -> pd.DataFrame:  # fmt: skip
    """``predict_urls`` per file system (a batch is read through one), rows in ``urls`` order."""
    import pandas as pd

    groups: dict[str, list[int]] = {}  # protocol -> positions in urls
    for i, url in enumerate(urls):
        groups.setdefault(storage.protocol_of(url), []).append(i)
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, len(urls))

    step(0)
    tables = []
    for positions in groups.values():
        table = predictor.predict_urls([urls[i] for i in positions], batch_size=batch_size,
                                       progress=step)  # fmt: skip
        table.index = positions
        tables.append(table)
    return tables[0] if len(tables) == 1 else pd.concat(tables).sort_index()


def format_table(table: pd.DataFrame, fmt: str) -> bytes:
    """The table as CSV (header row) or JSON (a list of records)."""
    if fmt == "json":
        records = [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                   for row in table.to_dict(orient="records")]  # fmt: skip
        return (json.dumps(records, indent=2) + "\n").encode()
    return table.to_csv(index=False).encode()


# -- the command ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brevpipe predict",
        description="Score images with an exported model; prints a table with path, predicted "
        "and score_<class> columns (CSV or JSON).",
        epilog="examples:\n"
        "  brevpipe predict jobs/<id>/artifacts/model/saved_model.tar.gz data/*.png\n"
        "  brevpipe predict <job-id> s3://bucket/new/ --format json --output preds.json\n"
        "  brevpipe predict runs:/<run_id>/mlflow_model 's3://b/x/**/*.jpg' --on-error skip",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="archive URL, job bucket URL, job id, "
                        "or MLflow URI (runs:/<run_id>/mlflow_model, models:/<name>/<version>)")
    parser.add_argument("images", metavar="IMAGES", nargs="+",
                        help="image files, globs (quote them) or folders; local or any fsspec URL")
    parser.add_argument("--output", "-o", metavar="FILE",
                        help="write the table here (any fsspec URL) instead of stdout")
    parser.add_argument("--format", choices=FORMATS,
                        help="csv (default) or json; default json when --output ends in .json")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="default 32")
    parser.add_argument("--job-root", default="./jobs", metavar="URL",
                        help="where job ids are looked up (default ./jobs)")
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow store for runs:/ and models:/ URIs (default "
                        "$MLFLOW_TRACKING_URI, else sqlite:///mlflow.db beside --job-root)")
    parser.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                        help="an unreadable image: stop with an error naming it (default), or "
                        "skip it with a warning on stderr")  # fmt: skip
    return parser


def main(argv: list[str]) -> int:
    """``brevpipe predict``; returns the exit code (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size {args.batch_size}: use 1 or more")
    fmt = args.format or ("json" if (args.output or "").lower().endswith(".json") else "csv")
    try:
        urls = expand_images(args.images)  # cheap mistakes first, before loading TensorFlow
        output = check_destination(args.output) if args.output else None
        predictor = resolve_model(args.model, args.job_root, args.tracking_uri)
        with _progress_bar(len(urls) > args.batch_size) as progress:
            table = predict_images(predictor, urls, args.batch_size, on_error=args.on_error,
                                   progress=progress)  # fmt: skip
        for url, reason in table.attrs.get("skipped", []):
            print(f"brevpipe predict: warning: skipped {url}: {reason}", file=sys.stderr)
        data = format_table(table, fmt)
        if output:
            write_output(output, data, fmt, len(table))
        else:
            sys.stdout.write(data.decode())
            sys.stdout.flush()
    except BrevpipeError as exc:
        print(f"brevpipe predict: error: {exc}", file=sys.stderr)
        return 1
    return 0


def check_destination(url: str) -> str:
    """The absolute ``--output`` URL, checked before any scoring: not a folder, and for remote
    storage reachable with the credentials at hand (a ConfigError naming it otherwise)."""
    url = storage.normalize(url)
    if storage.is_local(url):
        if Path(url).is_dir():
            raise ConfigError(f"--output {url} is a folder: give a file name such as "
                              f"{url}/predictions.csv.")  # fmt: skip
        return url
    try:
        fs, path = storage.get_fs(url)
        bucket = path.split("/", 1)[0]
        found = storage.call(fs, url, "exists", bucket)
    except BrevpipeError:
        raise
    except PermissionError:  # credentials scoped to a prefix may not see the bucket: go on
        return url  # (if the write fails after all, the results are kept in a local file)
    except Exception as exc:  # noqa: BLE001 - credentials, endpoint: name them
        found, problem = False, f"{type(exc).__name__}: {exc}"
    else:
        problem = f"its bucket {bucket!r} does not exist or cannot be seen"
    if not found:
        raise ConfigError(f"cannot write --output {url}: {problem}; check the bucket and the "
                          "credentials (AWS_* variables), or write to a local file.")  # fmt: skip
    return url


def write_output(url: str, data: bytes, fmt: str, rows: int) -> None:
    """Write the results to ``url`` and say where; if that fails now, keep them in a local
    file and say so (scores are never lost)."""
    try:
        storage.write_bytes(url, data)
    except Exception as exc:  # noqa: BLE001 - whatever storage raises, keep the results
        keep = Path(f"brevpipe-predictions-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}").resolve()
        keep.write_bytes(data)
        raise ConfigError(f"cannot write {url} ({type(exc).__name__}: {exc}); the {rows} "
                          f"results are in {keep}.") from None  # fmt: skip
    print(f"brevpipe predict: wrote {rows} results to {url}", file=sys.stderr)


class _progress_bar:  # noqa: N801 - used like a function: with _progress_bar(...) as update
    """A rich progress bar on stderr when it is a terminal and there is more than one batch."""

    def __init__(self, wanted: bool) -> None:
        self.bar: Any = None
        if wanted and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import Progress

            self.bar = Progress(console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task("scoring", total=None)

    def update(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)

    def __enter__(self) -> Callable[[int, int], None] | None:
        if self.bar is None:
            return None
        self.bar.start()
        return self.update

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
