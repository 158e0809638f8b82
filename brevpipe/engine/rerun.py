"""``brevpipe rerun``: run a job again, exactly, from its saved ``output.json``.

The output.json carries the fully resolved config and the pipeline's stage declarations with
their ``${...}`` links to the top-level config (``pipeline_template``). A rerun re-links the
two, applies the user's overrides (Hydra's override grammar), reuses the original job's split,
checks that the data did not change, and runs as a new job that records ``rerun_of``.

An output.json from a bucket is untrusted input: every ``_target_`` must be a registered
component (:mod:`brevpipe.config.components`), or an exact dotted name that the command line allows
(``rerun.allow_targets``, recorded in the new output.json); the stage declarations may only link
config nodes (no resolvers).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from brevpipe.config.components import REGISTRY, allowed_target_list, check_registered, modernize
from brevpipe.config.compose import CONF_DIR, REDACTED
from brevpipe.errors import ConfigError, DataError
from brevpipe.io import storage
from brevpipe.jobs.layout import JobBucket

# A stage declaration may link config nodes (``${trainer}``), nothing else (no resolvers).
_LINK = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_.]*\}")


def _strings(tree: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every ``(config path, string value)`` of a plain config tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(tree, list):
        for i, value in enumerate(tree):
            yield from _strings(value, f"{path}[{i}]")
    elif isinstance(tree, str):
        yield path, tree


def _check_links(template: Any) -> None:
    for path, text in _strings(template, "pipeline"):
        if "${" in _LINK.sub("", text):
            raise ConfigError(f"refusing {path}: {text!r} is not a plain config link.")


def _escape(tree: Any, escape: bool = True) -> Any:
    """Resolved values are data: a literal ``${`` must not become an interpolation again
    (``escape=False``: the same tree unescaped, to check that nothing resolves)."""
    if isinstance(tree, dict):
        return {k: _escape(v, escape) for k, v in tree.items()
                if v != REDACTED and not redacted_url(v)}  # secrets: dropped
    if isinstance(tree, list):
        return [_escape(v, escape) for v in tree]
    if isinstance(tree, str) and escape:
        return tree.replace("${", "\\${")
    return tree


def redacted_url(value: Any) -> bool:
    """A URL whose password was redacted (``scheme://user:***@host``)."""
    return isinstance(value, str) and f":{REDACTED}@" in value


# What today's stages pass on that earlier pipeline declarations did not: the classification
# report reads evaluate's per-sample predictions (declared since 2026-11-26), and reports read
# the training stage's history (2026-12-06), by (stage, inputs or outputs): names to add.
UPGRADES = {
    ("stage:classification.evaluate", "outputs"): ("predictions",),
    ("stage:classification.report", "inputs"): ("predictions", "history"),
    ("stage:classification.train", "outputs"): ("history",),
    ("stage:segmentation.train", "outputs"): ("history",),
    ("stage:segmentation.report", "inputs"): ("history",),
}


def upgrade_template(template: dict[str, Any]) -> dict[str, Any]:
    """An earlier pipeline declaration (public names already) with what today's stages take
    and give (:data:`UPGRADES`)."""
    stages = template.get("stages") if isinstance(template, dict) else None
    for stage in (stages or {}).values():
        if not isinstance(stage, dict):
            continue
        for side in ("inputs", "outputs"):
            names = stage.get(side) or []
            if not isinstance(names, list):  # malformed: the pipeline's checks will say so
                continue
            missing = [n for n in UPGRADES.get((stage.get("_target_"), side), ()) if n not in names]
            if missing:
                stage[side] = [*names, *missing]
    return template


def _config_groups() -> set[str]:
    return {p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra"}


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Apply Hydra value overrides (``a.b=1``, ``+a.c=2``, ``~a.d``) to ``cfg`` in place."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"bad override: {exc}") from None
    groups = _config_groups()
    for override in parsed:
        key = override.key_or_group
        if override.package is not None or (
            key in groups and isinstance(override.value(), str) and not override.is_delete()
        ):
            raise ConfigError(
                f"rerun takes value overrides (e.g. trainer.epochs=10), not config group "
                f"choices ({override.input_line}); start a new job for that: brevpipe run "
                f"{override.input_line} ..."
            )
        if override.is_delete():
            OmegaConf.update(cfg, key, None, force_add=True)
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            node.pop(leaf)
            continue
        exists = OmegaConf.select(cfg, key, default="__missing__") != "__missing__"
        if not exists and not override.is_add():
            raise ConfigError(
                f"{key} is not in the job's config: check the name, or add it with +{key}=..."
            )
        value = override.value()
        OmegaConf.update(cfg, key, value, merge=not isinstance(value, str), force_add=True)


def rebuild_config(
    output: dict[str, Any], url: str, overrides: Sequence[str], allow_data_change: bool = False
) -> DictConfig:
    """The original job's config, re-linked, with the rerun settings and ``overrides``.

    The output.json is untrusted: its values must be plain data (nothing left to resolve),
    its storage options are dropped (the command line and the environment give them), its
    types must be brevpipe's, and every ``_target_`` a registered component."""
    try:
        return _rebuild(output, url, overrides, allow_data_change)
    except ConfigError:
        raise
    except (OmegaConfBaseException, KeyError, TypeError, AttributeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"cannot rerun {url}: its config is not usable ({first}).") from None


def _rebuild(
    output: dict[str, Any], url: str, overrides: Sequence[str], allow_data_change: bool
) -> DictConfig:
    from brevpipe.config.settings import RerunSettings, Settings

    template = upgrade_template(modernize(output["pipeline_template"]))
    config = modernize(output["config"])
    if isinstance(config.get("pipeline"), dict):
        config["pipeline"] = upgrade_template(config["pipeline"])  # as resolved: the same
    _check_links(template)
    saved = {k: v for k, v in config.items() if k != "pipeline"}
    cfg = OmegaConf.create(_escape(saved))
    if OmegaConf.to_container(cfg, resolve=True) != _escape(saved, escape=False):
        raise ConfigError(f"refusing {url}: its config holds values that would be resolved "
                          "again (interpolations); an output.json holds plain values.")
    cfg.pipeline = OmegaConf.create(template)
    try:
        relinked = OmegaConf.to_container(cfg.pipeline, resolve=True)
    except Exception as exc:  # noqa: BLE001 - any resolution failure means a broken template
        raise ConfigError(f"cannot rebuild the pipeline from {url}: {exc}") from None
    if relinked != config["pipeline"]:
        raise ConfigError(f"the pipeline saved in {url} does not match its config; "
                          "it cannot be rerun exactly.")  # fmt: skip
    try:  # brevpipe's types: seed=abc in an output.json is refused like on the command line
        cfg = OmegaConf.merge(OmegaConf.structured(Settings), cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"refusing {url}: {str(exc).splitlines()[0]}") from None

    _settings_it_predates(cfg)
    bucket = output["job"]["bucket"]
    split_url = JobBucket(bucket).split
    cfg.job.id = None
    cfg.job.root = JobBucket(bucket).root
    cfg.storage.options = {}  # fsspec options can redirect and write anywhere: not from a file
    cfg.rerun = RerunSettings(  # replaced whole: the saved allow-list is untrusted
        of=url,
        job_id=output["job"]["id"],
        fingerprint=(output.get("samples") or {}).get("fingerprint"),
        allow_data_change=bool(allow_data_change),
        allow_targets=[],
    )
    if storage.exists(split_url):
        cfg.split.reuse_url = split_url
    apply_overrides(cfg, overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    allow = allowed_target_list(resolved["rerun"].get("allow_targets"))
    check_registered({k: v for k, v in resolved.items() if k != "pipeline"}, allow)
    check_registered(resolved["pipeline"], allow, "pipeline")
    _refuse_chained_urls(resolved)
    return cfg


def _settings_it_predates(cfg: DictConfig) -> None:
    """Settings a component gained after the job ran get the value that reproduces the job:
    the component's ``LEGACY_SETTINGS`` (the loader's ``reduced_jpeg_decode: false``, say)."""

    for node in cfg.values():
        if not isinstance(node, DictConfig) or not isinstance(node.get("_target_"), str):
            continue
        component = REGISTRY.find(node["_target_"])
        legacy = getattr(component.load(), "LEGACY_SETTINGS", None) if component else None
        if legacy:
            with open_dict(node):
                for key, value in legacy.items():
                    node.setdefault(key, value)


def _refuse_chained_urls(tree: Any) -> None:
    """fsspec URL chains (``filecache::https://...``) can write where their options say: a
    rerun takes plain URLs only."""
    for path, text in _strings(tree, ""):
        if "::" in text and "://" in text:
            raise ConfigError(f"refusing {path}: {text!r} is a chained fsspec URL; a rerun "
                              "takes plain URLs (start a new job with brevpipe run for that).")


def check_fingerprint(fingerprint: str, rerun: dict[str, Any] | None) -> None:
    """In a rerun, the sample table must be the original's unless data change is allowed."""
    expected = (rerun or {}).get("fingerprint")
    if not expected or fingerprint == expected:
        return
    message = (f"the data changed since job {rerun.get('job_id')} (sample table fingerprint "
               f"{fingerprint} != {expected})")  # fmt: skip
    if not rerun.get("allow_data_change"):
        raise DataError(f"{message}: the rerun would not be exact. Restore the data, or pass "
                        "--allow-data-change to run on the data as it is now.")  # fmt: skip

    logging.getLogger("brevpipe").warning("%s; going on (--allow-data-change)", message)
