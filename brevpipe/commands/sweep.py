"""``brevpipe sweep``: the sweeps of a job root: list, show, resume.

Reading sweeps is :mod:`brevpipe.jobs.sweeps`; a resumed sweep is ``brevpipe run -m`` again
with the sweep's recorded overrides and sweep folder, from the folder it started in: the same
sweep id, record, MLflow parent run and trial job ids (:mod:`brevpipe.integrations.sweep`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any

from brevpipe.config.components import check_registered
from brevpipe.config.compose import compose
from brevpipe.errors import BrevpipeError, ConfigError
from brevpipe.integrations.search import SWEEPER
from brevpipe.io import storage
from brevpipe.jobs.records import DEFAULT_ROOT
from brevpipe.jobs.sweeps import Sweep, get_sweep, list_sweeps

EPILOG = """\
examples:
  brevpipe sweep list                       the sweeps of ./jobs, newest first
  brevpipe sweep show <id>                  trials: status, overrides, objective; the best
  brevpipe sweep resume <id>                run again the trials that did not complete
  brevpipe sweep resume s3://bucket/jobs/sweeps/<id>.json
"""
# A record comes from a bucket: a resumed sweep runs only what these allow. Hydra's own
# settings: the basic, joblib or Ray launcher with numbers of workers, no other Hydra setting
# (no callbacks, search path, Ray address); the config: no _target_, no mapping, no
# interpolation (${oc.env:...} would copy a variable into the bucket), and only registered
# components in the composed config (as a rerun).
HYDRA_ALLOWED = re.compile(
    r"hydra\.mode=MULTIRUN|hydra/launcher=(basic|joblib|ray)|hydra/sweeper=(basic|brevpipe_optuna)"
    r"|hydra\.sweeper\.(n_trials|n_jobs)=\d{1,4}|hydra\.sweeper\.sampler\.seed=\d{1,9}"
    r"|hydra\.sweeper\.max_failure_rate=(0|1|0?\.\d{1,4}|1\.0)"
    r"|hydra\.launcher\.n_jobs=\d{1,4}|\+?hydra\.launcher\.ray\.init\.num_[cg]pus=\d{1,4}"
    r"|\+?hydra\.launcher\.ray\.init\.include_dashboard=(true|false)"
)
# no study storage (an RDB URL) and no redacted secret (***) in a record resumed as it is
FORBIDDEN = ("_target_", "${", "{", "search.storage", "***")
SWEEP_DIR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]{0,200}")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", default=argparse.SUPPRESS, metavar="URL",
                        help=f"job root (default {DEFAULT_ROOT})")
    common.add_argument("--format", choices=("table", "json"), default=argparse.SUPPRESS,
                        help="output format (default table)")  # fmt: skip
    parser = argparse.ArgumentParser(
        prog="brevpipe sweep", parents=[common], epilog=EPILOG,
        description="Sweeps (brevpipe run -m): their trials, the best so far, resuming one.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.add_parser("list", parents=[common], help="one row per sweep")
    for action, text in (("show", "the trials of a sweep and its best"),
                         ("resume", "run the trials that did not complete")):  # fmt: skip
        sub = actions.add_parser(action, parents=[common], help=text)
        sub.add_argument("sweep", help="a sweep id (or a unique prefix), or its record's URL")
    resume_parser = actions.choices["resume"]
    resume_parser.add_argument("--force", action="store_true",
                               help="resume although the record says its sweep runs on another "
                                    "machine (you know it does not)")  # fmt: skip
    return parser


def main(argv: list[str]) -> int:
    """``brevpipe sweep ...``; exit code 0 ok, 1 error, 2 usage."""
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
        if args.action == "list":
            sweeps = list_sweeps(root)
            _print(as_json, [s.summary() for s in sweeps], _table_of_sweeps, root)
            return 0
        sweep = get_sweep(root, args.sweep)
        if args.action == "show":
            _print(as_json, {**sweep.summary(), "rows": sweep.rows()}, _show, root)
            return 0
        return resume(sweep, force=args.force)
    except BrevpipeError as exc:
        print(f"brevpipe sweep: error: {exc}", file=sys.stderr)
        return 1


def resume_arguments(sweep: Sweep, force: bool = False) -> tuple[str, list[str]]:
    """The folder to start in and the ``brevpipe run`` arguments that run ``sweep`` again,
    checked: the record asks only for what :data:`HYDRA_ALLOWED` and :data:`FORBIDDEN` allow,
    it names this sweep, the config still composes with registered components only, and no
    other process runs the sweep."""
    from brevpipe.integrations.sweep import sweep_id

    record = sweep.record
    sweeper = str(record.get("sweeper") or "")
    if "optuna" in sweeper.lower() and sweeper != SWEEPER:
        raise ConfigError(f"sweep {sweep.id} ran with another Optuna sweeper ({sweeper[:80]}), "
                          "which kept its study in memory: it cannot continue; run the sweep "
                          "again (search=... picks brevpipe's, which resumes).")  # fmt: skip
    overrides, hydra = record.get("overrides"), record.get("hydra_overrides")
    cwd, folder = record.get("cwd"), record.get("sweep_dir")
    if not (isinstance(overrides, list) and isinstance(hydra, list)
            and all(isinstance(o, str) for o in [*overrides, *hydra])
            and isinstance(cwd, str) and isinstance(folder, str)):  # fmt: skip
        raise ConfigError(f"sweep {sweep.id}'s record has no overrides to run again (a record "
                          "written before brevpipe kept them): run the sweep again.")
    refused = [o for o in hydra if not HYDRA_ALLOWED.fullmatch(o)] + \
        [o for o in overrides if any(word in o for word in FORBIDDEN)
         or o.lstrip("+~").startswith("hydra")]
    if refused:
        raise ConfigError(f"sweep {sweep.id}'s record asks for {refused[0][:120]!r}: a resumed "
                          "sweep sets only plain config values (no study storage, no redacted "
                          "secret) and Hydra's basic, joblib or Ray launcher and its sweeper "
                          "counts; run it again yourself from its folder, brevpipe run -m ... "
                          f"hydra.sweep.dir={str(folder)[:120]} in {str(cwd)[:120]}, and it "
                          "continues.")  # fmt: skip
    if not SWEEP_DIR.fullmatch(folder) or ".." in folder.split("/"):
        raise ConfigError(f"sweep {sweep.id}'s folder {folder[:120]!r} is not a plain relative "
                          "path: run the sweep again.")  # fmt: skip
    if not Path(cwd).is_dir():
        raise ConfigError(f"sweep {sweep.id} started in {cwd}, which is not a folder here: "
                          "resume it on the machine it ran on.")  # fmt: skip
    if sweep_id(cwd, folder) != sweep.id:
        raise ConfigError(f"sweep {sweep.id}'s record does not lead back to it (its folder and "
                          "start folder make another sweep): run the sweep again.")
    _check_not_running(sweep, force)
    try:
        first = [_first_value(o) for o in overrides]
        check_registered(_plain(compose(first)))
    except BrevpipeError as exc:
        raise ConfigError(f"sweep {sweep.id} no longer composes: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Hydra's errors: an override that no longer fits
        reason = str(exc).split("\n")[0]
        raise ConfigError(f"sweep {sweep.id} no longer composes: {reason}") from None
    return cwd, ["-m", *hydra, *overrides, f"hydra.sweep.dir={folder}"]


def _check_not_running(sweep: Sweep, force: bool) -> None:
    """Refuse a sweep whose trials run, or whose driver (``brevpipe run -m``) still runs: on
    this machine, its process is alive; on another, the record cannot tell (``--force``)."""
    if sweep.status == "running":
        raise ConfigError(f"sweep {sweep.id} has trials running: resume it once they end "
                          "(brevpipe jobs stop stops one).")  # fmt: skip
    driver = sweep.record.get("running")
    if not isinstance(driver, dict):
        return
    if driver.get("host") != socket.gethostname():
        if not force:
            raise ConfigError(f"sweep {sweep.id} was started on {str(driver.get('host'))[:80]} "
                              "and has not ended there: if it no longer runs, add --force.")
        return
    try:
        os.kill(int(driver.get("pid")), 0)  # no signal: is it alive
    except (ProcessLookupError, TypeError, ValueError):
        return
    except PermissionError:  # alive, another user's
        pass
    raise ConfigError(f"sweep {sweep.id} is still running here (process {driver.get('pid')}): "
                      "resume it once it ends.")  # fmt: skip


def _first_value(override: str) -> str:
    """``key=a,b,c`` -> ``key=a``: one trial's override, to check the config composes."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    [parsed] = OverridesParser.create().parse_overrides([override])
    if not parsed.is_sweep_override():
        return override
    if parsed.is_interval_sweep():
        return f"{parsed.get_key_element()}={parsed.value().start}"
    value = next(iter(parsed.sweep_string_iterator()))
    return f"{parsed.get_key_element()}={value}"


def _plain(cfg: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def resume(sweep: Sweep, force: bool = False) -> int:
    """Run ``sweep`` again from the folder it started in: completed trials are reused,
    interrupted ones resume from their checkpoints, the rest run."""
    from brevpipe.commands import run

    cwd, arguments = resume_arguments(sweep, force)
    done = sum(t.status == "completed" for t in sweep.trials)
    print(f"sweep {sweep.id}: resuming in {cwd} ({done} of {len(sweep.trials)} trials "
          "completed so far)")  # fmt: skip
    os.chdir(cwd)
    return run.main(arguments)


# -- printing ---------------------------------------------------------------------------------
def _print(as_json: bool, data: Any, printer: Any, root: str) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        printer(data, root)


def _value(value: Any) -> str:
    return "-" if not isinstance(value, int | float) else f"{value:.4f}"


def _table_of_sweeps(rows: list[dict[str, Any]], root: str) -> None:
    if not rows:
        print(f"no sweeps in {root} (brevpipe run -m ... makes one)")
        return
    print(f"{'sweep':<32} {'status':<12} {'trials':>6} {'done':>5} {'pruned':>6}  {'best':>8}  "
          "objective")  # fmt: skip
    for row in rows:
        best = (row["best"] or {}).get("value")
        print(f"{row['id'][:32]:<32} {row['status']:<12} {row['trials']:>6} "
              f"{row['completed']:>5} {row['pruned']:>6}  {_value(best):>8}  {row['objective']}")


def _show(info: dict[str, Any], root: str) -> None:
    rows = info["rows"]
    print(f"sweep {info['id']}  {info['status']}  ({info['completed']} of {len(rows)} trials "
          f"completed, {info['pruned']} pruned; {info['objective']}, {info['direction']})")
    print(f"  overrides  {' '.join(info['overrides'])}")
    if info["resumed"]:
        print(f"  resumed    {', '.join(info['resumed'])}")
    print(f"{'trial':>5}  {'job':<20} {'status':<10} {'epochs':>7}  {'objective':>9}  values")
    for row in rows:
        epochs = f"{row['epochs']}/{row['planned_epochs'] or '?'}"
        print(f"{row['trial']:>5}  {row['job_id'][:20]:<20} {row['status']:<10} "
              f"{epochs:>7}  {_value(row['objective']):>9}  {row['values']}")
    if best := info["best"]:
        print(f"best: trial {best['trial']} (job {best['job_id']}) with {_value(best['value'])}")
    epochs = info["epochs"]
    if info["pruned"] and epochs["planned"]:
        print(f"pruning saved {epochs['saved']} of {epochs['planned']} epochs "
              f"({epochs['saved'] / epochs['planned']:.0%})")
