"""``brevpipe init DIR``: a minimal user project that extends brevpipe without forking it.

It holds a package with one component (a model builder) registered by entry point, a preset
for it in ``conf/model/``, and a README with the commands that install and run it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

USAGE = """\
usage: brevpipe init DIR [--package NAME]

Write a minimal brevpipe user project into DIR (created; must be empty if it exists):
  pyproject.toml                  the package, with its brevpipe.components entry point
  <package>/models.py             a model builder: build(input_shape, num_classes, ...)
  <package>/components.py         register(registry): what the entry point calls
  conf/model/my_net.yaml          a preset for it (starts from its typed settings)
  README.md                       install, run, rerun

Then: pip install -e DIR && cd DIR && brevpipe run --config-dir conf model=my_net
"""

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{project}"
version = "0.1.0"
description = "Components and configs for brevpipe"
requires-python = ">=3.10"
dependencies = ["brevpipe"]

# brevpipe finds the package's components through this entry point: no edit of brevpipe
[project.entry-points."brevpipe.components"]
{package} = "{package}.components:register"

[tool.setuptools]
packages = ["{package}"]
"""

MODELS = '''\
"""Model builders of {package}. brevpipe passes input_shape, num_classes and multi_label; the
other parameters, with their types and defaults, are the settings of conf/model/*.yaml."""

from __future__ import annotations

from collections.abc import Sequence


def build(
    input_shape: Sequence[int],
    num_classes: int,
    multi_label: bool = False,
    width: int = 16,
    depth: int = 2,
    dropout: float = 0.1,
):
    """A plain CNN: ``depth`` conv blocks of ``width`` doubling filters, then global pooling.

    ``width``: filters of the first block; ``depth``: number of conv blocks; ``dropout``:
    before the classifier.
    """
    import keras

    inputs = keras.Input(tuple(input_shape))
    x = inputs
    for block in range(depth):
        x = keras.layers.Conv2D(width * 2**block, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(dropout)(x)
    activation = "sigmoid" if multi_label else "softmax"
    outputs = keras.layers.Dense(num_classes, activation=activation)(x)
    return keras.Model(inputs, outputs, name="my_net")
'''

COMPONENTS = '''\
"""What {package} adds to brevpipe: called once through the brevpipe.components entry point."""

from brevpipe.api import MODEL_RUNTIME, Registry


def register(registry: Registry) -> None:
    # its public name in configs and records: _target_: model:my_net (or my_net, or the path)
    registry.add("model", "my_net", "{package}.models.build", runtime=MODEL_RUNTIME)
'''

PRESET = """\
# A preset of {package}'s model: it starts from the component's typed settings (its
# signature's defaults) and changes only what differs. brevpipe schema model=my_net shows them.
defaults:
  - /schema/model/my_net@_here_
  - _self_

width: 8
"""

README = """\
# {project}

A brevpipe user project: a model builder of its own (`{package}/models.py`), registered by
entry point (`pyproject.toml`), and a preset for it (`conf/model/my_net.yaml`).

```bash
pip install -e .                                      # registers the component
brevpipe schema --components | grep my_net            # model  my_net  {package}.models.build
brevpipe schema model=my_net --config-dir conf        # its settings as JSON Schema
brevpipe run --config-dir conf model=my_net trainer.epochs=3
brevpipe rerun jobs/<id>/artifacts/output.json        # the same job again, exactly
```

Add presets beside `conf/model/my_net.yaml` (any group: `conf/trainer/long.yaml`, ...) and new
components in `{package}/components.py`. A config names a component by its public name
`kind:name` (`model:my_net`), its short name (`my_net`) or its dotted path; `brevpipe rerun`
builds registered components only.
"""


def write_project(folder: Path, package: str | None = None) -> list[Path]:
    """Write the project files into ``folder``; returns them."""
    folder = folder.resolve()
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty: give a new or empty folder.")
    project = re.sub(r"[^a-z0-9]+", "-", folder.name.lower()).strip("-") or "my-project"
    package = package or re.sub(r"\W+", "_", project.replace("-", "_"))
    if not package.isidentifier():
        raise ValueError(f"--package {package!r} is not a Python identifier.")
    values = {"project": project, "package": package}
    files = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{package}/__init__.py": '"""Components and configs for brevpipe."""\n',
        f"{package}/models.py": MODELS,
        f"{package}/components.py": COMPONENTS,
        "conf/model/my_net.yaml": PRESET,
    }
    written = []
    for name, template in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brevpipe init", usage=USAGE, add_help=False)
    parser.add_argument("folder", metavar="DIR", nargs="?")
    parser.add_argument("--package", metavar="NAME")
    parser.add_argument("-h", "--help", action="store_true")
    return parser


def main(args: list[str]) -> int:
    try:
        options = build_parser().parse_args(args)
    except SystemExit as exc:  # argparse said what is wrong, and how it is used
        return exc.code if isinstance(exc.code, int) else 2
    if options.help or options.folder is None:
        print(USAGE, end="")
        return 0 if options.help else 2
    if options.package == "":
        print(USAGE, end="", file=sys.stderr)
        return 2
    try:
        written = write_project(Path(options.folder), options.package)
    except (FileExistsError, ValueError) as exc:
        print(f"brevpipe init: {exc}", file=sys.stderr)
        return 1
    folder = written[0].parent
    print(f"wrote a brevpipe user project in {folder}:")
    for path in written:
        print(f"  {path.relative_to(folder)}")
    print(f"next: pip install -e {folder} && cd {folder} && "
          "brevpipe run --config-dir conf model=my_net")  # fmt: skip
    return 0
