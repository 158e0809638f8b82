"""``brevpipe cache info|clear``: the data cache that jobs share (:mod:`brevpipe.io.cache`)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys

from brevpipe.errors import BrevpipeError
from brevpipe.io.cache import DEFAULT_MAX_GB, DataCache, default_root

EPILOG = """\
examples:
  brevpipe cache info                         the default root ($BREVPIPE_CACHE_ROOT or
                                              ~/.cache/brevpipe/data)
  brevpipe cache info --root s3://bucket/cache --format json
  brevpipe cache clear                        remove every entry
  brevpipe cache clear --to-gb 5              remove least recently used entries down to 5 GB
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brevpipe cache", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The data cache that jobs share (runtime.cache_root): dataset listings and "
                    "decoded images, keyed by content.",
    )  # fmt: skip
    parser.add_argument("action", choices=("info", "clear"))
    parser.add_argument("--root", default=None,
                        help="cache root: a folder or fsspec URL (default: runtime.cache_root's "
                             f"auto, now {default_root()})")  # fmt: skip
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--to-gb", type=float, default=None,
                        help="clear: keep the most recently used entries up to this size")
    return parser


def main(argv: list[str]) -> int:
    """``brevpipe cache ...``; exit code 0 ok, 1 error, 2 usage."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    cache = DataCache.from_settings(args.root or "auto", DEFAULT_MAX_GB)
    if cache is None:
        print(f"brevpipe cache: --root {args.root!r} names no cache; give a folder or fsspec "
              "URL (runtime.cache_root=null turns the cache off for jobs)", file=sys.stderr)
        return 2
    try:
        if args.action == "clear":
            if args.to_gb is not None:
                removed = len(DataCache(cache.root, int(args.to_gb * 1e9)).evict())
            else:
                removed = cache.clear()
            print(f"removed {removed} files from {cache.root}")
            return 0
        info = cache.info()
    except BrevpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    print(f"data cache {info['root']}")
    for kind, figures in info["kinds"].items():
        print(f"  {kind:<9} {figures['entries']:>8} entries  {_size(figures['bytes']):>10}")
    print(f"  {'total':<9} {'':>8}          {_size(info['bytes']):>10}  "
          f"(cap runtime.cache_max_gb, default {DEFAULT_MAX_GB:g} GB)")  # fmt: skip
    if info["last_used"]:
        when = datetime.datetime.fromtimestamp(info["last_used"]).isoformat(timespec="seconds")
        print(f"  last used {when}")
    return 0


def _size(count: float) -> str:
    """Bytes for people: ``512 B``, ``1.5 MB``, ``20.0 GB``."""
    unit = "B"
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            break
        count /= 1000
    return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
