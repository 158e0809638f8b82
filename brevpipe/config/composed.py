"""The composed config and its JSON Schema, as ``brevpipe schema`` prints them and the
dashboard's launch form reads them: composing with Hydra's compose API, the options of each
config group, the component each preset starts from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brevpipe.config.components import GROUP_KINDS, REGISTRY
from brevpipe.config.compose import CONF_DIR, compose
from brevpipe.errors import ConfigError


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
