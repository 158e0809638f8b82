"""MkDocs hooks: the settings and command-line references, generated at every build.

``reference/settings.md`` comes from ``brevpipe schema`` (the JSON Schema of the composed
config: brevpipe's settings, each config group's options and each component's settings);
``reference/cli.md`` from the commands table (:data:`brevpipe.commands.cli.COMMANDS`) and each
command's own ``--help``. Nothing is written into ``docs/``: the pages exist in the build only.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
from typing import Any

SETTINGS_PAGE = "reference/settings.md"
CLI_PAGE = "reference/cli.md"


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for path, text in ((SETTINGS_PAGE, settings_reference()), (CLI_PAGE, cli_reference())):
        files.append(File.generated(config, path, content=text))
    return files


def _text(description: str | None) -> str:
    """A schema description as one Markdown table cell (RST literals as code)."""
    return " ".join((description or "").replace("``", "`").replace("|", "\\|").split())


def _type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(_type(p) for p in prop["anyOf"])
    if prop.get("type") == "array":
        inner = _type(prop.get("items") or {})
        return f"list of {inner}" if inner else "list"
    if prop.get("type") == "object" and "additionalProperties" in prop:
        inner = _type(prop["additionalProperties"]) if isinstance(
            prop["additionalProperties"], dict) else ""  # fmt: skip
        return f"mapping of {inner}" if inner else "mapping"
    kind = prop.get("type", "any")
    return " or ".join(kind) if isinstance(kind, list) else str(kind)


def _default(prop: dict[str, Any]) -> str:
    return f"`{json.dumps(prop['default'])}`" if "default" in prop else "required"


def _table(properties: dict[str, Any], prefix: str) -> list[str]:
    rows = ["| setting | type | default | description |", "|---|---|---|---|"]
    for name, prop in properties.items():
        rows.append(f"| `{prefix}{name}` | {_type(prop)} | {_default(prop)} | "
                    f"{_text(prop.get('description'))} |")  # fmt: skip
    return rows


def settings_reference() -> str:
    """Every setting ``brevpipe schema`` prints, as Markdown tables."""
    from brevpipe.config.composed import schema_of

    schema = schema_of(None)
    lines = ["# Settings reference", "",
             "Generated from `brevpipe schema` at every build of these pages: every setting of "
             "the composed config, its type, default and description. A config group's option "
             "(`model=mobilenet_v2`) picks a preset of one of the group's components; "
             "`brevpipe schema GROUP=OPTION` prints that preset's values.", ""]  # fmt: skip
    properties = schema["properties"]
    groups = [name for name, prop in properties.items() if "anyOf" in prop]
    lines += ["## brevpipe's settings", ""]
    for name, prop in properties.items():
        if name in groups:
            continue
        if "properties" in prop:
            lines += [f"### `{name}`", "", *_table(prop["properties"], f"{name}."), ""]
        else:
            options = prop.get("x-brevpipe-options")
            extra = f" Options: {', '.join(options['enum'])}." if options else ""
            lines += [f"### `{name}`", "", f"{_type(prop)}, default {_default(prop)}. "
                      f"{_text(prop.get('description'))}{extra}", ""]  # fmt: skip
    lines += ["## Config groups", ""]
    for group in groups:
        options = properties[group]["x-brevpipe-options"]
        lines += [f"### `{group}`", "",
                  f"Options: {', '.join(f'`{o}`' for o in options['enum'])} "
                  f"(default `{options['default']}`).", ""]  # fmt: skip
        for ref in properties[group]["anyOf"]:
            key = ref["$ref"].rsplit("/", 1)[1]
            component = schema["$defs"][key]
            public = component["properties"]["_target_"]["default"]
            lines += [f"#### `{public}`", "", _text(component.get("description")), ""]
            settings = {k: v for k, v in component["properties"].items()
                        if k not in ("_target_", "_partial_")}  # fmt: skip
            lines += [*(_table(settings, f"{group}.") if settings else ["No settings."]), ""]
    return "\n".join(lines)


def cli_reference() -> str:
    """Each command of the commands table with its own ``--help``."""
    from brevpipe.commands.cli import COMMANDS, usage

    lines = ["# Command-line reference", "",
             "Generated from the commands table and each command's `--help` at every build "
             "of these pages.", "", "```text", usage().rstrip(), "```", ""]  # fmt: skip
    for command in COMMANDS:
        lines += [f"## `brevpipe {command.name}`", "", "```text", _help(command.module), "```", ""]
    return "\n".join(lines)


def _help(module_name: str) -> str:
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.suppress(SystemExit):
        importlib.import_module(module_name).main(["--help"])
    return text.getvalue().rstrip()
