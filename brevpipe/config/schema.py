"""Typed settings: each registered component's parameters, read once from its own code.

A component's signature (a dataclass's fields, or a function's or class's parameters, with
their annotations and defaults) is the one home of its defaults. From it this module makes:

- a Hydra structured config, stored in the ConfigStore as ``schema/<kind>/<name>``; the YAML
  presets start from it (``defaults: [/schema/model/small_cnn@_here_, _self_]``) and only
  change values, so a misspelt key or a wrong type fails at compose time, before TensorFlow;
- a JSON Schema (draft 2020-12) for ``brevpipe schema``: what a web form needs to render
  the settings.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

from omegaconf import MISSING, OmegaConf

from brevpipe.config.components import GROUP_KINDS, REGISTRY, Component

SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"
# config groups whose options are components of the kind of the same name
_PRIMITIVES = (int, float, bool, str)


@dataclasses.dataclass(frozen=True)
class Parameter:
    name: str
    annotation: Any  # an OmegaConf-supported type (Any where OmegaConf has none)
    default: Any  # MISSING when required
    description: str = ""


def _omegaconf_type(annotation: Any) -> Any:
    """The nearest type OmegaConf can check: primitives, Optional, List and Dict of them."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation in _PRIMITIVES:
        return annotation
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            inner = _omegaconf_type(rest[0])
            return Any if inner is Any else Optional[inner]  # noqa: UP045 - OmegaConf needs it
        return Any
    if origin in (list, tuple, Sequence, typing.Sequence):
        item = args[0] if args else Any
        return list[item] if item in _PRIMITIVES else list[Any]
    if origin in (dict, Mapping, typing.Mapping):
        value = args[1] if len(args) == 2 else Any
        return dict[str, value] if value in _PRIMITIVES else dict[str, Any]
    return Any


def _field_docs(doc: str) -> dict[str, str]:
    """Descriptions of settings from a docstring: its ``Settings:`` lines (````name````: text),
    else the first ````name````: text mention in its prose."""
    found: dict[str, str] = {}
    if "Settings:" in doc:
        for line in doc.split("Settings:", 1)[1].splitlines():
            match = re.match(r"\s*``(\w+)``: (.+)$", line)
            if match:
                found[match.group(1)] = match.group(2).strip()
    prose = " ".join(doc.split())
    for match in re.finditer(r"``(\w+)``(?: \([^)]*\))?:? ([^;]+?)(?:;|\.\s|\.$|$)", prose):
        found.setdefault(match.group(1), match.group(2))
    return found


def parameters(component: Component) -> list[Parameter]:
    """The configurable parameters of a component, in declaration order."""
    return parameters_of(component.load(), component.runtime)


def parameters_of(target: Any, skip: Sequence[str] = ()) -> list[Parameter]:
    """The parameters of a dataclass, class or function (less ``skip``), in order."""
    classes = getattr(target, "__mro__", (target,))  # inherited settings keep their docs
    docs = _field_docs("\n".join(inspect.getdoc(c) or "" for c in classes if c is not object))
    skip = set(skip)
    out = []
    if dataclasses.is_dataclass(target):
        hints = typing.get_type_hints(target)
        for f in dataclasses.fields(target):
            if f.name in skip or not f.init:
                continue
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = MISSING
            out.append(Parameter(f.name, _omegaconf_type(hints.get(f.name, Any)),
                                 _plain(default), docs.get(f.name, "")))  # fmt: skip
        return out
    signature = inspect.signature(target, eval_str=True)
    for p in signature.parameters.values():
        if p.name in skip or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = MISSING if p.default is inspect.Parameter.empty else _plain(p.default)
        annotation = Any if p.annotation is inspect.Parameter.empty else p.annotation
        out.append(Parameter(p.name, _omegaconf_type(annotation), default,
                             docs.get(p.name, "")))  # fmt: skip
    return out


def _plain(value: Any) -> Any:
    """Tuples as lists (YAML has no tuples); other values as they are."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_class(component: Component) -> type:
    """A dataclass for Hydra's ConfigStore: ``_target_`` plus the component's parameters."""
    fields: list[tuple[str, Any, Any]] = [
        ("_target_", str, dataclasses.field(default=component.public_name))
    ]
    if component.kind == "model":  # builders get the input shape and class count at fit time
        fields.append(("_partial_", bool, dataclasses.field(default=True)))
    for p in parameters(component):
        if isinstance(p.default, list | dict):
            default = dataclasses.field(default_factory=_factory(p.default))
        else:
            default = dataclasses.field(default=p.default)
        fields.append((p.name, p.annotation, default))
    words = re.split(r"[\W_]+", component.name if component.name == component.kind
                     else f"{component.name}_{component.kind}")  # fmt: skip
    name = "".join(word.title() for word in words)
    return dataclasses.make_dataclass(f"{name}Config", fields)


def _factory(value: Any) -> Callable[[], Any]:

    return lambda: copy.deepcopy(value)


_STORED: set[str] = set()


def store_schemas() -> None:
    """Put every registered component of a config group's kind into Hydra's ConfigStore as
    ``schema/<kind>/<name>`` (idempotent; entry points of other packages included)."""

    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for component in REGISTRY:
        key = f"{component.kind}/{component.name}"
        if component.kind not in GROUP_KINDS or key in _STORED:
            continue
        _STORED.add(key)
        try:
            node = config_class(component)
            OmegaConf.structured(node)  # a default OmegaConf cannot hold fails here, not later
        except Exception as exc:  # noqa: BLE001 - one package's component must not stop others
            logging.getLogger("brevpipe").warning(
                "no typed settings for %s:%s (%s): %s; its presets cannot start from "
                "/schema/%s", component.kind, component.name, component.target, exc, key)
            continue
        store.store(group=f"schema/{component.kind}", name=component.name, node=node,
                    provider=component.package)  # fmt: skip


# -- JSON Schema --------------------------------------------------------------------------------
def _json_type(annotation: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    simple = {int: "integer", float: "number", bool: "boolean", str: "string"}
    if annotation in simple:
        return {"type": simple[annotation]}
    if origin is Union:
        inner = _json_type(next(a for a in args if a is not type(None)))
        if "type" in inner:
            return {**inner, "type": [inner["type"], "null"]}
        return {"anyOf": [inner, {"type": "null"}]}
    if origin is list:
        return {"type": "array", "items": _json_type(args[0]) if args else {}}
    if origin is dict:
        return {"type": "object", "additionalProperties": _json_type(args[1]) if args else {}}
    return {}


def component_schema(component: Component) -> dict[str, Any]:
    """The JSON Schema of one component's settings (``_target_`` included)."""
    doc = (inspect.getdoc(component.load()) or "").split("\n\n")[0]
    names = [component.public_name, component.name, component.target]
    properties: dict[str, Any] = {"_target_": {"enum": names, "default": component.public_name}}
    if component.kind == "model":
        properties["_partial_"] = {"const": True, "default": True}
    required = ["_target_"]
    for p in parameters(component):
        prop = _json_type(p.annotation)
        if p.default is MISSING:
            required.append(p.name)
        else:
            prop["default"] = p.default
        if p.description:
            prop["description"] = p.description
        properties[p.name] = prop
    return {
        "title": f"{component.kind}: {component.name}",
        "description": " ".join(doc.split()),
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def settings_schema(settings: type) -> dict[str, Any]:
    """The JSON Schema of one of brevpipe's own settings dataclasses (brevpipe.config.settings)."""
    properties: dict[str, Any] = {}
    for p in parameters_of(settings):
        prop = _json_type(p.annotation)
        if p.default is not MISSING:
            prop["default"] = p.default
        if p.description:
            prop["description"] = p.description
        properties[p.name] = prop
    doc = (inspect.getdoc(settings) or "").split("\n\n")[0]
    return {"description": " ".join(doc.split()), "type": "object", "properties": properties,
            "additionalProperties": False}  # fmt: skip


def config_schema(
    composed: Mapping[str, Any], options: Mapping[str, Sequence[str]],
    choices: Mapping[str, str], preset_targets: Mapping[str, Mapping[str, str]],
) -> dict[str, Any]:  # fmt: skip
    """The JSON Schema of a whole composed config (``composed``, unresolved): each group takes
    any component of its kind; ``x-brevpipe-options`` lists the group's options (the enums a
    form offers), with the chosen one as default."""
    defs: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    for group in GROUP_KINDS:
        if group not in composed:
            continue
        refs = []
        for component in REGISTRY.of_kind(group):
            key = f"{component.kind}.{component.name}"
            defs[key] = component_schema(component)
            refs.append({"$ref": f"#/$defs/{key}"})
        properties[group] = {
            "title": group,
            "anyOf": refs,
            "x-brevpipe-options": {
                "enum": list(options.get(group, [])),
                "default": choices.get(group),
                "targets": dict(preset_targets.get(group, {})),
            },
        }
    from brevpipe.config.settings import Settings

    for f in dataclasses.fields(Settings):
        if f.name in properties or f.name not in composed:
            continue
        kind = typing.get_type_hints(Settings)[f.name]
        if dataclasses.is_dataclass(kind):
            properties[f.name] = settings_schema(kind)
        elif f.name == "pipeline":
            pipelines = {"enum": list(options.get(f.name, [])), "default": choices.get(f.name)}
            properties[f.name] = {"type": "object", "x-brevpipe-options": pipelines,
                                  "description": "the stages (conf/pipeline/*.yaml)"}  # fmt: skip
        elif f.name == "seed":
            properties[f.name] = {"type": "integer", "default": f.default,
                                  "description": "the root seed: every stage and component "
                                  "derives its own seed from it"}  # fmt: skip
        else:
            properties[f.name] = {}
    return {
        "$schema": SCHEMA_URI,
        "title": "brevpipe config",
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": False,
        "$defs": defs,
    }
