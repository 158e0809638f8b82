"""``brevpipe jobs``: list, show, diff, stop, archive, unarchive, statistics, sync: arguments
and printing.

What they do is in :mod:`brevpipe.jobs` (reading a job root, comparing jobs) and
:mod:`brevpipe.integrations.lifecycle` (stop and archive, mirrored into MLflow).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from brevpipe.commands.job_tables import (
    print_diff,
    print_json,
    print_list,
    print_show,
    print_statistics,
    print_sync,
)
from brevpipe.errors import BrevpipeError
from brevpipe.integrations.lifecycle import set_archived, stop_job
from brevpipe.integrations.sync import sync_record
from brevpipe.io import storage
from brevpipe.jobs.compare import compare
from brevpipe.jobs.details import describe, statistics
from brevpipe.jobs.job import LOST, STATUSES, JobStatus
from brevpipe.jobs.layout import JobBucket
from brevpipe.jobs.records import DEFAULT_ROOT, get_job, list_jobs

EPILOG = """\
examples:
  brevpipe jobs list                          jobs in ./jobs, newest first
  brevpipe jobs list --status running --root s3://bucket/jobs
  brevpipe jobs list --tag line3 --dataset 3f2a    tagged jobs trained on this exact data
  brevpipe jobs show <id>                     an id or a unique prefix of one
  brevpipe jobs statistics <id> --format json
  brevpipe jobs diff <id> <id> [<id>...]      settings that differ, metric deltas (--all-keys)
  brevpipe jobs stop <id>                     ends as 'stopped' at the next training batch
  brevpipe jobs archive <id>                  hidden from list (--all shows it); MLflow run deleted
  brevpipe jobs sync <id> [<id>...]           mirror jobs into MLflow again (adds what is missing)
  brevpipe jobs sync --all --tracking-uri http://mlflow:5000
"""


def build_parser() -> argparse.ArgumentParser:
    """``brevpipe jobs`` with its subcommands; ``--root``/``--format`` go before or after."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--root",
        default=argparse.SUPPRESS,
        help=f"job root: a folder or fsspec URL (default {DEFAULT_ROOT})",
    )
    common.add_argument("--format", choices=("table", "json"), default=argparse.SUPPRESS,
                        help="output format (default table)")  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="brevpipe jobs", parents=[common], epilog=EPILOG,
        description="The job registry: the jobs of a job root and their state.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="one row per job")
    listing.add_argument("--status", choices=STATUSES, help="only jobs with this status")
    listing.add_argument("--pipeline", help="only jobs of this pipeline")
    listing.add_argument("--all", action="store_true", help="include archived jobs")
    listing.add_argument("--tag", action="append", default=[], metavar="TAG",
                         help="only jobs with this tag (repeat: with every one)")
    listing.add_argument("--dataset", metavar="DIGEST",
                         help="only jobs trained on this exact data (a dataset digest or a "
                              "prefix of one, from jobs show)")  # fmt: skip
    for action, text in (
        ("show", "config summary, metrics, stages, artifacts, MLflow run"),
        ("stop", "ask a running job to stop (it ends as 'stopped')"),
        ("archive", "hide a job from list; delete its MLflow run"),
        ("unarchive", "show an archived job again; restore its MLflow run"),
        ("statistics", "progress: epochs and stages done, latest metrics"),
    ):
        sub = actions.add_parser(action, parents=[common], help=text)
        sub.add_argument("id", help="a job id or a unique prefix of one")
    diffing = actions.add_parser("diff", parents=[common],
                                 help="settings that differ and metric deltas of 2+ jobs")
    diffing.add_argument("ids", nargs="+", metavar="id", help="job ids or unique prefixes")
    diffing.add_argument("--all-keys", action="store_true",
                         help="every setting, equal ones too")  # fmt: skip
    syncing = actions.add_parser(
        "sync", parents=[common], help="mirror ended jobs into MLflow, adding what is missing")
    syncing.add_argument("ids", nargs="*", metavar="id", help="job ids or unique prefixes")
    syncing.add_argument("--all", action="store_true", help="every ended job of the root")
    syncing.add_argument("--tracking-uri", help="the MLflow store (default: the job's own, "
                         "when it is a sqlite file or the root's default)")  # fmt: skip
    return parser


def main(argv: list[str]) -> int:
    """``brevpipe jobs ...``; exit code 0 ok, 1 error, 2 usage."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    if not args.action:
        parser.print_help(sys.stderr)
        return 2
    root = storage.normalize(getattr(args, "root", None) or DEFAULT_ROOT)
    as_json = getattr(args, "format", "table") == "json"
    handler: Callable[[argparse.Namespace, str, bool], int] = HANDLERS[args.action]
    try:
        return handler(args, root, as_json)
    except BrevpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _list(args: argparse.Namespace, root: str, as_json: bool) -> int:
    records = list_jobs(root, status=args.status, pipeline=args.pipeline,
                        include_archived=args.all, tags=args.tag,
                        dataset=args.dataset)  # fmt: skip
    if as_json:
        print_json([r.summary() for r in records])
    else:
        print_list(records, root)
    return 0


def _show(args: argparse.Namespace, root: str, as_json: bool) -> int:
    info = describe(get_job(root, args.id))
    if as_json:
        print_json(info)
    else:
        print_show(info)
    return 0


def _statistics(args: argparse.Namespace, root: str, as_json: bool) -> int:
    stats = statistics(get_job(root, args.id))
    if as_json:
        print_json(stats)
    else:
        print_statistics(stats)
    return 0


def _diff(args: argparse.Namespace, root: str, as_json: bool) -> int:
    if len(args.ids) < 2:
        print("error: name two or more jobs to compare", file=sys.stderr)
        return 2
    result = compare([get_job(root, job_id) for job_id in args.ids], not args.all_keys)
    if as_json:
        print_json(result)
    else:
        print_diff(result)
    return 0


def _stop(args: argparse.Namespace, root: str, as_json: bool) -> int:
    result = stop_job(root, args.id)
    if as_json:
        print_json(result)
    elif "settled" in result:
        print(f"job {result['id']} was lost (killed without a word); now marked 'stopped' "
              f"({result['settled']}); resume it with brevpipe run job.id={result['id']} ...")
    elif result["already"]:
        print(f"a stop of job {result['id']} was already requested at "
              f"{result.get('requested')} by {result.get('by')}; it ends as 'stopped' at its "
              "next training batch")  # fmt: skip
    else:
        marker = JobBucket(result["bucket"]).stop
        print(f"stop requested for job {result['id']} ({marker}); it ends as 'stopped' at its "
              "next training batch")  # fmt: skip
    return 0


def _sync(args: argparse.Namespace, root: str, as_json: bool) -> int:
    if bool(args.ids) == bool(args.all):
        print("error: name the jobs to sync, or --all", file=sys.stderr)
        return 2
    if args.all:
        records = [r for r in list_jobs(root, include_archived=True)
                   if r.status not in (JobStatus.RUNNING, LOST)]  # fmt: skip
    else:
        records = [get_job(root, job_id) for job_id in args.ids]
    results, failed = [], 0
    for record in records:
        try:
            results.append(sync_record(record, root, args.tracking_uri))
        except Exception as exc:  # noqa: BLE001 - one job's failure does not stop the others
            failed += 1
            reason = (str(exc).splitlines() or [""])[0]
            results.append({"id": record.id, "error": f"{type(exc).__name__}: {reason}"}
                           if not isinstance(exc, BrevpipeError) else
                           {"id": record.id, "error": str(exc)})  # fmt: skip
    if as_json:
        print_json(results)
    else:
        print_sync(results)
    return 1 if failed else 0


def _archive(args: argparse.Namespace, root: str, as_json: bool) -> int:
    result = set_archived(root, args.id, args.action == "archive")
    if result["warning"]:
        print(f"warning: {result['warning']}", file=sys.stderr)
    if as_json:
        print_json(result)
    else:
        print(f"job {result['id']} {args.action}d; {result['mlflow']}")
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace, str, bool], int]] = {
    "list": _list, "show": _show, "diff": _diff, "statistics": _statistics, "stop": _stop,
    "archive": _archive, "unarchive": _archive, "sync": _sync,
}  # fmt: skip
