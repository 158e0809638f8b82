"""``brevpipe schema``: the settings as JSON Schema (draft 2020-12), and the component registry.

Imports stay light: Hydra's compose API and the components' modules, never TensorFlow or MLflow.
"""

from __future__ import annotations

import argparse
import json
import sys

from brevpipe.config.components import REGISTRY
from brevpipe.config.composed import schema_of
from brevpipe.errors import BrevpipeError

USAGE = """\
usage: brevpipe schema [GROUP[=OPTION]] [--config-dir DIR] [--components]

Print the JSON Schema (draft 2020-12) of brevpipe's settings: of the whole composed config
(types, defaults, descriptions, the options of each config group), or of one group's component
(GROUP: the default option; GROUP=OPTION: that preset's values as defaults).

  brevpipe schema                      the composed default config
  brevpipe schema trainer              the trainer's settings
  brevpipe schema model=mobilenet_v2   one preset
  brevpipe schema --components         the registered components (kind, name, target)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brevpipe schema", usage=USAGE, add_help=False)
    parser.add_argument("selector", nargs="?")
    parser.add_argument("--config-dir")
    parser.add_argument("--components", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    return parser


def main(args: list[str]) -> int:
    options = build_parser().parse_args(args)
    if options.help:
        print(USAGE, end="")
        return 0
    try:
        if options.components:
            for c in REGISTRY:
                print(f"{c.kind:<10} {c.name:<28} {c.target:<48} {c.package}")
            return 0
        print(json.dumps(schema_of(options.selector, options.config_dir), indent=2))
    except BrevpipeError as exc:
        print(f"brevpipe schema: {exc}", file=sys.stderr)
        return 1
    return 0
