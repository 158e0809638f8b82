"""``brevpipe schema``: the settings as JSON Schema (draft 2020-12), and the component registry.

Imports stay light: Hydra's compose API and the components' modules, never TensorFlow or MLflow.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from brevpipe.errors import BrevpipeError, ConfigError

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


def group_options(config_dirs: list[Path]) -> dict[str, list[str]]:
    """The options of each config group: ``conf/<group>/*.yaml`` in every config folder."""
    options: dict[str, set[str]] = {}
    for folder in config_dirs:
        for group in (p for p in folder.iterdir() if p.is_dir() and p.name != "hydra"):
            options.setdefault(group.name, set()).update(f.stem for f in group.glob("*.yaml"))
    return {group: sorted(names) for group, names in sorted(options.items())}


def preset_component(folders: list[Path], group: str, option: str) -> str | None:
    """The public name of the component a preset starts from (its ``/schema/<kind>/<name>``
    default)."""
    from omegaconf import OmegaConf

    from brevpipe.config.components import REGISTRY

    for folder in reversed(folders):  # a user's preset shadows brevpipe's
        path = folder / group / f"{option}.yaml"
        if path.exists():
            preset = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
            for entry in preset.get("defaults") or []:
                if isinstance(entry, str) and entry.startswith("/schema/"):
                    kind, name = entry.split("@")[0].split("/")[2:4]
                    return REGISTRY.get(f"{kind}:{name}").public_name
            target = preset.get("_target_")
            return REGISTRY.get(target).public_name if target else None
    return None


def compose_plain(overrides: list[str], config_dir: str | None = None) -> tuple[dict, dict]:
    """The composed config (resolved where it can be) and the group choices."""
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from brevpipe.config.compose import compose

    try:
        cfg = compose(overrides, config_dir, with_hydra=True)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
    choices = {k: str(v) for k, v in cfg.hydra.runtime.choices.items() if "hydra" not in k}
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:
        plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    return plain, choices


def schema_of(selector: str | None, config_dir: str | None = None) -> dict[str, Any]:
    """The JSON Schema printed by ``brevpipe schema [selector]``."""
    from brevpipe.config.components import GROUP_KINDS, REGISTRY
    from brevpipe.config.compose import CONF_DIR
    from brevpipe.config.schema import SCHEMA_URI, component_schema, config_schema

    folders = [CONF_DIR, *([Path(config_dir)] if config_dir else [])]
    options = group_options(folders)
    if selector is None:
        plain, choices = compose_plain([], config_dir)
        targets = {
            group: {option: preset_component(folders, group, option)
                    for option in options.get(group, [])}
            for group in GROUP_KINDS
        }  # fmt: skip
        return config_schema(plain, options, choices, targets)
    group, _, option = selector.partition("=")
    if group not in GROUP_KINDS:
        raise ConfigError(f"schema: {group!r} is not a config group of components; use one of "
                          f"{', '.join(GROUP_KINDS)}.")  # fmt: skip
    plain, choices = compose_plain([selector] if option else [], config_dir)
    node = plain[group]
    component = REGISTRY.get(node["_target_"], group)
    schema = component_schema(component)
    for key, value in node.items():  # the preset's values are this option's defaults
        if key in schema["properties"] and key != "_target_" and "${" not in str(value):
            schema["properties"][key]["default"] = value
    return {"$schema": SCHEMA_URI, **schema, "x-brevpipe-option": option or choices.get(group)}


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
            from brevpipe.config.components import REGISTRY

            for c in REGISTRY:
                print(f"{c.kind:<10} {c.name:<28} {c.target:<48} {c.package}")
            return 0
        print(json.dumps(schema_of(options.selector, options.config_dir), indent=2))
    except BrevpipeError as exc:
        print(f"brevpipe schema: {exc}", file=sys.stderr)
        return 1
    return 0
