"""How ``brevpipe jobs`` prints: rich tables for people, JSON for programs."""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

from brevpipe.jobs import layout
from brevpipe.jobs.details import format_duration, format_value
from brevpipe.jobs.job import UNKNOWN
from brevpipe.jobs.records import SHORT_ID, JobRecord, parse_time


def format_time(text: str | None, short: bool = False) -> str:
    """Local time; ``short`` as ``ls -l`` does (``Nov 25 05:55``; the year if not this one)."""
    stamp = parse_time(text)
    if stamp is None:
        return "-"
    stamp = stamp.astimezone()
    if not short:
        return stamp.strftime("%Y-%m-%d %H:%M:%S")
    this_year = stamp.year == dt.datetime.now().year
    return stamp.strftime("%b %d %H:%M" if this_year else "%b %d  %Y")


def short_ids(ids: list[str]) -> dict[str, str]:
    """Id prefixes of at least ``SHORT_ID`` characters that tell the given ids apart."""
    unique, longest, length = len(set(ids)), max((len(i) for i in ids), default=0), SHORT_ID
    while length < longest and len({i[:length] for i in ids}) < unique:
        length += 2
    return {i: i[:length] for i in ids}


def _console() -> Any:
    """Rich console for tables; no markup, so that paths and errors print as they are."""
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True, markup=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 160  # piped or logged: no terminal to fit, keep rows on one line
    return console


def _styled(*parts: str | tuple[str, str]) -> Any:
    from rich.text import Text

    return Text.assemble(*parts)


def _table(title: str | None, *columns: str, keep: dict[str, int] | None = None) -> Any:
    """A compact table; the ``keep`` columns (name -> width) are never wrapped or cut."""
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False,
                  padding=(0, 1, 0, 0), show_edge=False)  # fmt: skip
    keep = keep or {}
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in keep,
                         min_width=keep.get(column))  # fmt: skip
    return table


STATUS_STYLE = {"completed": "green", "failed": "red", "running": "cyan", "stopped": "yellow",
                "pruned": "blue", UNKNOWN: "magenta"}  # fmt: skip


def print_list(records: list[JobRecord], root: str) -> None:
    console = _console()
    if not records:
        console.print(f"no jobs in {root} (add --all to include archived ones)")
        return
    short = short_ids([r.id for r in records])
    names = {r.key_metric[0] for r in records if r.output is not None}
    shared = names.pop() if len(names) == 1 else None  # one key metric: it heads the column
    # one key metric: it heads the value column; several: a column names each job's
    tagged = any(r.tags for r in records)
    columns = ["id", "pipeline", "status", "start", "duration",
               *([shared] if shared else ["key metric", "value"]),
               *(["tags"] if tagged else [])]  # fmt: skip
    table = _table(None, *columns, keep={"id": len(next(iter(short.values()))), "start": 12})
    for record in records:
        name, value = record.key_metric
        status = _styled((record.status, STATUS_STYLE.get(record.status, "")),
                         "*" if record.archived else "",
                         "+" if record.mirror_pending else "")  # fmt: skip
        metric = "-" if not name or value is None else format_value(value)
        named = [metric] if shared else [name or "-", metric]
        table.add_row(short[record.id], record.pipeline or "-", status,
                      format_time(record.job.get("start"), short=True),
                      format_duration(record.duration_s), *named,
                      *([", ".join(record.tags)] if tagged else []))  # fmt: skip
    console.print(table)
    if any(r.archived for r in records):
        console.print("* archived (listed with --all only)", style="dim")
    if any(r.mirror_pending for r in records):
        console.print(f"+ MLflow run incomplete: brevpipe jobs sync ID --root {root} (or --all)",
                      style="dim")  # fmt: skip
    for record in records:
        if record.problem:
            console.print(f"note: {short[record.id]}: {record.problem}", style="dim")


def print_show(info: dict[str, Any]) -> None:
    console = _console()
    console.print(_styled((f"job {info['id']}", "bold"), f"  {info['status']}",
                          "  (archived)" if info["archived"] else ""))  # fmt: skip
    lines = [
        ("pipeline", info["pipeline"]),
        ("bucket", info["bucket"]),
        ("start", format_time(info["start"])),
        ("end", format_time(info["end"])),
        ("duration", format_duration(info["duration_s"])),
        ("tags", ", ".join(info.get("tags") or [])),
        ("dataset", _dataset_text(info.get("dataset_record") or {})),
        ("error", info.get("error")),
        ("stop request", _stop_text(info.get("stop_request"))),
    ]
    for label, value in lines:
        if value:
            console.print(f"  {label:<13} {value}")
    config = info["config"]
    table = _table("config", "key", "value")
    for group, choice in sorted(config["choices"].items()):
        table.add_row(group, str(choice))
    table.add_row("seed", format_value(config["seed"]))
    table.add_row("key_metric", format_value(config["key_metric"]))
    for key, value in config["params"].items():
        table.add_row(key, format_value(value))
    console.print(table)
    if info["metrics"]:
        table = _table("metrics", "name", "value")
        for name, value in sorted(info["metrics"].items()):
            table.add_row(name, format_value(value))
        console.print(table)
    if info["stages"]:
        table = _table("stages", "stage", "status", "cached", "seconds")
        for stage in info["stages"]:
            table.add_row(stage["name"], str(stage["status"]), "yes" if stage["cached"] else "",
                          format_value(stage["seconds"]))  # fmt: skip
        console.print(table)
    table = _table("artifacts", "path", "size")
    caches = [a for a in info["artifacts"] if a["path"].startswith(f"{layout.STAGES}/")]
    for artifact in info["artifacts"]:
        if not artifact["path"].startswith(f"{layout.STAGES}/"):
            table.add_row(artifact["path"], format_size(artifact["size"]))
    if caches:
        total = sum(a["size"] or 0 for a in caches)
        table.add_row(f"{layout.STAGES}/ ({len(caches)} files: stage caches)", format_size(total))
    console.print(table)
    mlflow = info["mlflow"]
    if mlflow.get("run_id"):
        console.print(f"  mlflow: run {mlflow['run_id']} in '{mlflow.get('experiment')}' at "
                      f"{mlflow.get('tracking_uri')}")  # fmt: skip
    else:
        console.print("  mlflow: no run" + (f" ({mlflow['error']})" if "error" in mlflow else ""))


def _dataset_text(dataset: dict[str, Any]) -> str | None:
    if not dataset.get("digest"):
        return None
    source = ", ".join(map(str, dataset.get("source") or []))
    return f"{dataset['digest']}  ({dataset.get('count', '?')} images from {source or '?'})"


def _stop_text(marker: dict[str, Any] | None) -> str | None:
    if marker is None:
        return None
    return f"at {marker.get('requested', '?')} by {marker.get('by', '?')}"


def format_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(size)


def print_statistics(stats: dict[str, Any]) -> None:
    console = _console()
    console.print(_styled((f"job {stats['id']}", "bold"), f"  {stats['status']}  elapsed "
                          f"{format_duration(stats['elapsed_s'])}"))  # fmt: skip
    epochs = stats["num_epochs"] if stats["num_epochs"] is not None else "?"
    console.print(f"  epochs  {stats['epoch']}/{epochs}"
                  + (f"  ({stats['epoch_progress']:.0f}%)"
                     if stats["epoch_progress"] is not None else ""))  # fmt: skip
    console.print(f"  stages  {stats['stages_done']}/{stats['stages_total']}"
                  + (f"  ({stats['stage_progress']:.0f}%)"
                     if stats["stage_progress"] is not None else ""))  # fmt: skip
    if stats["latest_epoch"]:
        latest = stats["latest_epoch"]
        values = "  ".join(f"{k} {format_value(v)}" for k, v in latest.items() if k != "epoch")
        console.print(f"  epoch {latest.get('epoch')}: {values}")
    table = _table("stages", "stage", "status", "seconds", "metrics")
    for stage in stats["stages"]:
        # Summary metrics only (``devel/accuracy``, not ``devel/f1/circle``); json has all.
        shown = {k: v for k, v in sorted(stage["metrics"].items()) if k.count("/") <= 1}
        metrics = ", ".join(f"{k} {format_value(v)}" for k, v in shown.items())
        if hidden := len(stage["metrics"]) - len(shown):
            metrics += f" (+{hidden} more: --format json)"
        table.add_row(stage["name"], str(stage["status"]), format_value(stage["seconds"]),
                      metrics or "-")  # fmt: skip
    console.print(table)


def print_sync(results: list[dict[str, Any]]) -> None:
    """One line per job of ``brevpipe jobs sync``: what its MLflow run got."""
    if not results:
        print("no ended jobs to sync")
    for result in results:
        if "error" in result:
            print(f"job {result['id']}: not synced: {result['error']}")
            continue
        added = [f"{result['params']} params" if result["params"] else "",
                 f"{result['metric_points']} metric points" if result["metric_points"] else "",
                 "artifacts" if result["artifacts"] else "", "model" if result["model"] else "",
                 f"ended {result['status']}" if result["status"] else ""]  # fmt: skip
        added = [a for a in added if a]
        run = f"run {result['run_id']}{' (new)' if result['created'] else ''}"
        what = ("added " + ", ".join(added)) if added else "already complete"
        print(f"job {result['id']}: {run} at {result['tracking_uri']}: {what}")
        for note in result.get("notes") or []:
            print(f"  note: {note}")


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def print_diff(result: dict[str, Any]) -> None:
    """``brevpipe jobs diff``: the settings that differ, then the metrics with deltas from the
    first job."""
    console = _console()
    short = short_ids(result["jobs"])
    ids = [short[i] for i in result["jobs"]]
    table = _table("settings" + ("" if result["equal_settings"] == 0 else
                                 f" ({result['equal_settings']} equal, not shown)"),
                   "key", *ids)  # fmt: skip
    for row in result["config"]:
        table.add_row(row["key"], *row["values"])
    console.print(table if result["config"] else "settings: all equal")
    equal = f", {result['equal_metrics']} equal, not shown" if result["equal_metrics"] else ""
    metrics = _table(f"metrics (delta from the first job{equal})", "metric", *ids)
    for row in result["metrics"]:
        cells = [format_value(row["values"][0]) if row["values"][0] is not None else "-"]
        for value, delta in zip(row["values"][1:], row["deltas"][1:], strict=True):
            text = "-" if value is None else format_value(value)
            cells.append(f"{text} ({delta:+.4g})" if delta is not None else text)
        metrics.add_row(row["name"], *cells)
    console.print(metrics if result["metrics"] else "metrics: all equal")
