"""The launch form: made from ``brevpipe schema`` (each group's options, the chosen options'
settings with their types, defaults and descriptions), checked as ``brevpipe run`` checks a
config (Hydra's composition, the component registry), and started as a ``brevpipe run``
process. A component can be picked only among the registered options; no ``_target_`` and no
``${...}`` interpolation comes from the form."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brevpipe.config.components import check_names
from brevpipe.config.composed import compose_plain, schema_of
from brevpipe.errors import BrevpipeError, ConfigError

SECTIONS = ("dataset", "model", "trainer", "augmenter", "sampler", "loader", "encoder", "split",
            "pipeline", "tracking")  # fmt: skip
TOP_LEVEL = {"seed": "integer"}


@dataclass
class Field:
    name: str  # dotted key, e.g. trainer.epochs
    kind: str  # integer, number, boolean, string, json
    value: str
    description: str = ""
    nullable: bool = False
    error: str = ""


@dataclass
class Section:
    group: str
    options: list[str]
    chosen: str
    fields: list[Field] = field(default_factory=list)


def _kind(spec: dict[str, Any]) -> tuple[str, bool]:
    types = spec.get("type", "string")
    types = [types] if isinstance(types, str) else list(types)
    nullable = "null" in types
    kinds = [t for t in types if t != "null"] or ["string"]
    kind = kinds[0] if kinds[0] in ("integer", "number", "boolean", "string") else "json"
    return kind, nullable


def _text(value: Any, kind: str) -> str:
    if value is None:
        return ""
    if kind == "boolean":
        return "true" if value else "false"
    return json.dumps(value) if kind == "json" or not isinstance(value, str) else value


def build_form(choices: dict[str, str], values: dict[str, Any] | None = None) -> list[Section]:
    """The form's sections for these group choices; field values from ``values`` (a job's
    config, for "clone and edit") or the composed defaults."""
    schema = schema_of(None)
    props = schema["properties"]
    picked = {g: choices[g] for g in SECTIONS
              if g in props and choices.get(g) in props[g].get("x-brevpipe-options", {})
              .get("enum", [])}  # fmt: skip
    composed, chosen = compose_plain([f"{g}={o}" for g, o in picked.items()])
    sections = []
    for group in SECTIONS:
        options = props.get(group, {}).get("x-brevpipe-options")
        if not options:
            continue
        section = Section(group, list(options["enum"]), chosen.get(group, options["default"]))
        target = options.get("targets", {}).get(section.chosen) or ""
        spec = schema["$defs"].get(target.replace(":", ".", 1), {})
        for key, setting in spec.get("properties", {}).items():
            if key.startswith("_"):
                continue
            kind, nullable = _kind(setting)
            given = ((values or {}).get(group) or {}) if values else composed.get(group) or {}
            value = given.get(key, (composed.get(group) or {}).get(key)) if isinstance(
                given, dict) else None  # fmt: skip
            if isinstance(value, dict | list):
                kind = "json"  # a structured setting (an optimizer's config...) is edited as JSON
            section.fields.append(Field(f"{group}.{key}", kind, _text(value, kind),
                                        str(setting.get("description", "")), nullable))
        sections.append(section)
    top = Section("", [], "", [Field("seed", "integer", _text(
        (values or composed).get("seed", composed.get("seed")), "integer"),
        "the root seed: every stage and component derives its own seed from it")])
    return [top, *sections]


def parse(field_: Field, text: str) -> Any:
    """The typed value of one field, or a ConfigError naming the field."""
    text = text.strip()
    if text == "" and (field_.nullable or field_.kind == "string"):
        return None if field_.nullable else ""
    if "${" in text:
        raise ConfigError(f"{field_.name}: interpolations (${{...}}) are not taken from the form")
    try:
        if field_.kind == "integer":
            return int(text)
        if field_.kind == "number":
            return float(text)
        if field_.kind == "boolean":
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if field_.kind == "json":
            return json.loads(text)
    except (ValueError, RecursionError):
        article = "an" if field_.kind == "integer" else "a"
        raise ConfigError(f"{field_.name}: {text[:40]!r} is not {article} {field_.kind}") from None
    return text


KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def hydra_value(value: Any) -> str:
    """``value`` in Hydra's override grammar: strings single-quoted (a quote, and backslashes
    before one, escaped), lists and mappings in Hydra's own brackets, mapping keys plain."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError("not a finite number")
        return repr(value)
    if isinstance(value, str):
        return "'" + re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", value) + "'"
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not all(isinstance(k, str) and KEY.fullmatch(k) for k in value):
            raise ConfigError("mapping keys must be plain names (letters, digits, _)")
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"a {type(value).__name__} cannot be given on the command line")


def default_of(item: Field) -> Any:
    try:
        return parse(item, item.value)
    except ConfigError:
        return None


def overrides_of(form: dict[str, str]) -> tuple[list[str], list[Section]]:
    """The ``brevpipe run`` overrides a submitted form asks for (only what differs from the
    chosen options' defaults), checked as ``brevpipe run`` checks them; the form with the
    errors marked when a value is wrong (raises :class:`ConfigError` with the form)."""
    choices = {k.removeprefix("choice:"): v for k, v in form.items() if k.startswith("choice:")}
    sections = build_form(choices)
    overrides = [f"{s.group}={s.chosen}" for s in sections if s.group]
    errors = []
    for section in sections:
        for item in section.fields:
            text = form.get(f"set:{item.name}")
            if text is None or text == item.value:
                continue  # unchanged: the option's own value (interpolations included) stays
            try:
                value = parse(item, text)
            except ConfigError as exc:
                item.error, item.value = str(exc), text
                errors.append(str(exc))
                continue
            if value != default_of(item):
                try:
                    overrides.append(f"{item.name}={hydra_value(value)}")
                except ConfigError as exc:
                    item.error = f"{item.name}: {exc}"
                    errors.append(item.error)
            item.value = text
    if errors:
        raise FormError("; ".join(errors), sections)
    try:
        composed, _ = compose_plain(overrides)
        check_names(composed)
    except BrevpipeError as exc:
        raise FormError(str(exc), sections) from None
    return overrides, sections


class FormError(ConfigError):
    """A form that does not make a valid job: the message and the form to show again."""

    def __init__(self, message: str, sections: list[Section]) -> None:
        super().__init__(message)
        self.sections = sections


def start(overrides: list[str], root: str, logs: Path) -> tuple[str, subprocess.Popen]:
    """Start ``brevpipe run`` with ``overrides`` in ``root``; its output goes to a log file.
    Returns the new job's id and the process."""
    job_id = str(uuid.uuid4())
    logs.mkdir(parents=True, exist_ok=True)
    log = (logs / f"{job_id}.log").open("wb")
    command = [sys.executable, "-m", "brevpipe", "run", *overrides,
               f"job.root={hydra_value(root)}", f"job.id={job_id}"]  # fmt: skip
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    log.close()
    return job_id, process
