"""``brevpipe models``: registered models in MLflow's registry: list, show, promote, register.

What they do is :mod:`brevpipe.integrations.registry`; this module parses and prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from brevpipe.errors import BrevpipeError
from brevpipe.integrations import registry
from brevpipe.integrations.sync import store_for, sync_record
from brevpipe.io import storage
from brevpipe.jobs.layout import JobBucket, default_tracking_uri
from brevpipe.jobs.records import DEFAULT_ROOT, get_job

EPILOG = """\
examples:
  brevpipe models list
  brevpipe models show parts_classifier                versions, aliases, metrics, promotions
  brevpipe models promote parts_classifier @candidate --alias champion \\
      --require 'devel/accuracy>=0.95' --than champion
  brevpipe models promote parts_classifier 3 --alias champion
  brevpipe models register <job id> --name parts_classifier   (retry a failed registration)
"""


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--tracking-uri", default=argparse.SUPPRESS, metavar="URI",
                        help="the MLflow store (default $MLFLOW_TRACKING_URI, else the job "
                             "root's sqlite:///mlflow.db)")  # fmt: skip
    common.add_argument("--root", default=argparse.SUPPRESS, metavar="URL",
                        help=f"job root (default {DEFAULT_ROOT})")
    common.add_argument("--format", choices=("table", "json"), default=argparse.SUPPRESS,
                        help="output format (default table)")  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="brevpipe models", parents=[common], epilog=EPILOG,
        description="Registered models: versions with aliases, promotion gates and their log.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", parents=[common], help="one row per registered model")
    show = actions.add_parser("show", parents=[common],
                              help="versions, aliases, metrics, promotions, test reports")
    show.add_argument("name")
    promote = actions.add_parser("promote", parents=[common], help="move an alias behind gates")
    promote.add_argument("name")
    promote.add_argument("version", nargs="?", default=None,
                         help="a version number or @alias (default @candidate)")
    promote.add_argument("--alias", required=True, help="the alias to move, such as champion")
    promote.add_argument("--require", action="append", default=[], metavar="'METRIC>=X'",
                         help="a metric threshold the version must meet (repeatable; quote it: "
                              "the shell reads > as a redirection)")  # fmt: skip
    promote.add_argument("--than", metavar="ALIAS",
                         help="the version's key metric must beat the one ALIAS holds")
    promote.add_argument("--by", help="who promotes (default: the user name)")
    register = actions.add_parser("register", parents=[common],
                                  help="register a completed job's model (a retry)")
    register.add_argument("job", help="a job id or a unique prefix of one")
    register.add_argument("--name", help="the registered model (default: the job's "
                                         "tracking.register)")  # fmt: skip
    return parser


def main(argv: list[str]) -> int:
    """``brevpipe models ...``; exit code 0 ok, 1 refused or failed, 2 usage."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    if not args.action:
        parser.print_help(sys.stderr)
        return 2
    root = storage.normalize(getattr(args, "root", None) or DEFAULT_ROOT)
    as_json = getattr(args, "format", "table") == "json"
    try:
        uri = store_of(args, root)
        result = HANDLERS[args.action](args, registry.open_registry(uri), root, uri)
    except BrevpipeError as exc:
        print(f"brevpipe models: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - MLflow's and the store's errors: one line
        reason = (str(exc).splitlines() or [""])[0][:300]
        print(f"brevpipe models: error: {type(exc).__name__}: {reason}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(result, indent=2, default=str))
    else:
        PRINTERS[args.action](result)
    return 0


def store_of(args: argparse.Namespace, root: str) -> str:
    """The MLflow store: --tracking-uri, else (registering a job) the job's own, else
    $MLFLOW_TRACKING_URI, else the root's sqlite:///mlflow.db."""
    if explicit := getattr(args, "tracking_uri", None):
        return str(explicit)
    if args.action == "register":
        return store_for(get_job(root, args.job), root, None)
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def _all(search: Callable[..., Any], *args: Any) -> list[Any]:
    """Every page of an MLflow search."""
    found, token = [], None
    while True:
        page = search(*args, max_results=1000 if search.__name__.endswith("models") else 10000,
                      page_token=token)  # fmt: skip
        found += list(page)
        token = page.token
        if not token:
            return found


def _versions(client: Any, name: str) -> list[Any]:
    return _all(client.search_model_versions, f"name='{registry.check_name(name)}'")


# -- actions: each returns plain data ---------------------------------------------------------
def _list(args: argparse.Namespace, client: Any, root: str, uri: str) -> list[dict[str, Any]]:
    rows = []
    for model in _all(client.search_registered_models):
        if not registry.NAME.fullmatch(model.name):  # not one brevpipe made: its name is shown
            rows.append({"name": model.name, "versions": None, "latest": None,
                         "aliases": {}, "updated": _time(model.last_updated_timestamp)})
            continue
        versions = _versions(client, model.name)
        rows.append({"name": model.name, "versions": len(versions),
                     "latest": max((int(v.version) for v in versions), default=None),
                     "aliases": {a: int(v) for a, v in sorted(model.aliases.items())},
                     "updated": _time(model.last_updated_timestamp)})  # fmt: skip
    return sorted(rows, key=lambda r: r["name"])


def _show(args: argparse.Namespace, client: Any, root: str, uri: str) -> dict[str, Any]:
    model = registry.get_model(client, args.name)
    by_version: dict[int, list[str]] = {}
    for alias, number in model.aliases.items():
        by_version.setdefault(int(number), []).append(alias)
    versions = []
    for version in sorted(_versions(client, args.name), key=lambda v: int(v.version)):
        tags = version.tags or {}
        key = tags.get("brevpipe.key_metric") or ""
        metrics = registry.version_metrics(client, version)
        versions.append({
            "version": int(version.version), "aliases": sorted(by_version.get(int(version.version),
                                                                             [])),
            "created": _time(version.creation_timestamp), "job_id": tags.get("brevpipe.job_id"),
            "key_metric": key, "value": metrics.get(key), "dataset": tags.get("brevpipe.dataset"),
            "tags": tags.get("brevpipe.tags", ""), "run_id": version.run_id,
            "test_reports": registry.test_reports(version),
        })  # fmt: skip
    return {"name": model.name, "tracking_uri": uri, "versions": versions,
            "promotions": registry.promotions(model)}  # fmt: skip


def _promote(args: argparse.Namespace, client: Any, root: str, uri: str) -> dict[str, Any]:
    gates = [registry.Gate.parse(text) for text in args.require]
    return registry.promote(client, args.name, args.version, args.alias, gates, args.than,
                            args.by)  # fmt: skip


def _register(args: argparse.Namespace, client: Any, root: str, uri: str) -> dict[str, Any]:
    record = get_job(root, args.job)
    output = record.output or {}
    name = args.name or ((output.get("mlflow") or {}).get("registry") or {}).get("name") or (
        (record.config.get("tracking") or {}).get("register"))
    if not name:
        raise registry.RegistryError(f"job {record.id} names no model: add --name NAME.")
    if record.status != "completed":
        raise registry.RegistryError(f"job {record.id} is {record.status}: only a completed "
                                     "job's model is registered.")  # fmt: skip
    synced = sync_record(record, root, uri)  # the run and its models first (idempotent)
    output = storage.read_json(JobBucket(record.bucket).output)
    entry = registry.register_run(client, str(name), synced["run_id"], output)
    output.setdefault("mlflow", {})["registry"] = entry
    storage.write_json(JobBucket(record.bucket).output, output)
    return {"job_id": record.id, **entry}


HANDLERS: dict[str, Callable[[argparse.Namespace, Any, str, str], Any]] = {
    "list": _list, "show": _show, "promote": _promote, "register": _register,
}  # fmt: skip


# -- printing ---------------------------------------------------------------------------------
def _time(millis: int | None) -> str | None:
    if not millis:
        return None
    return dt.datetime.fromtimestamp(millis / 1000, dt.timezone.utc).isoformat(timespec="seconds")


def _number(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.4g}"


def _table(title: str | None, *columns: str) -> Any:
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", pad_edge=False,
                  padding=(0, 1, 0, 0), show_edge=False)  # fmt: skip
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, markup=False,
                   width=None if sys.stdout.isatty() else 160)  # fmt: skip


def _print_list(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no registered models (a job registers its model with tracking.register=NAME)")
        return
    table = _table(None, "name", "versions", "latest", "aliases", "updated")
    for row in rows:
        aliases = ", ".join(f"@{a}={v}" for a, v in row["aliases"].items()) or "-"
        table.add_row(row["name"], str(row["versions"] or "-"), str(row["latest"] or "-"), aliases,
                      str(row["updated"] or "-"))  # fmt: skip
    _console().print(table)


def _print_show(info: dict[str, Any]) -> None:
    console = _console()
    console.print(f"model {info['name']}  ({info['tracking_uri']})")
    table = _table("versions", "version", "aliases", "created", "job", "key metric", "value",
                   "dataset", "tags")  # fmt: skip
    for v in info["versions"]:
        table.add_row(str(v["version"]), ", ".join(f"@{a}" for a in v["aliases"]) or "-",
                      str(v["created"] or "-"), (v["job_id"] or "-")[:8], v["key_metric"] or "-",
                      _number(v["value"]), v["dataset"] or "-", v["tags"] or "-")  # fmt: skip
    console.print(table)
    log = _table("promotions", "at", "by", "alias", "from", "to", "gates", "metrics")
    for p in info["promotions"]:
        gates = "; ".join(str(g.get("gate")) for g in p.get("gates") or []) or "-"
        metrics = ", ".join(f"{k} {_number(v)}" for k, v in (p.get("metrics") or {}).items())
        log.add_row(str(p.get("at")), str(p.get("by")), f"@{p.get('alias')}",
                    str(p.get("from") if p.get("from") is not None else "-"), str(p.get("to")),
                    gates, metrics or "-")  # fmt: skip
    console.print(log if info["promotions"] else "promotions: none yet")
    reports = [(v["version"], r) for v in info["versions"] for r in v["test_reports"]]
    if reports:
        table = _table("test reports", "version", "job", "at", "dataset", "metrics")
        for number, r in reports:
            metrics = ", ".join(f"{k} {_number(v)}" for k, v in sorted(r["metrics"].items())
                                if k.startswith("test/") and k.count("/") == 1)  # fmt: skip
            table.add_row(str(number), str(r.get("job_id"))[:8], str(r.get("at")),
                          str(r.get("dataset") or "-"), metrics or "-")  # fmt: skip
        console.print(table)


def _print_promote(result: dict[str, Any]) -> None:
    if not result["moved"]:
        print(f"@{result['alias']} already holds version {result['version']} of "
              f"{result['name']}: nothing moved")  # fmt: skip
        return
    gates = "; ".join(f"{g['gate']} ({_number(g.get('value'))})" for g in result["gates"])
    print(f"{result['name']}: @{result['alias']} moved from version "
          f"{result['from'] if result['from'] is not None else '(none)'} to {result['version']}"
          f"{'; gates passed: ' + gates if gates else ''}")  # fmt: skip


def _print_register(result: dict[str, Any]) -> None:
    print(f"job {result['job_id']}: registered as {result['name']} version {result['version']} "
          f"(@{result['alias']}, {result['uri']})")  # fmt: skip


PRINTERS: dict[str, Callable[[Any], None]] = {
    "list": _print_list, "show": _print_show, "promote": _print_promote,
    "register": _print_register,
}  # fmt: skip
