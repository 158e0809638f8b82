"""Typed settings: one home for defaults (the components' own signatures), errors at compose
time, and ``brevpipe schema`` as JSON Schema checked with the jsonschema package."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import jsonschema
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from brevpipe.config.components import REGISTRY
from brevpipe.config.compose import CONF_DIR
from brevpipe.config.composed import compose_plain, group_options, preset_component, schema_of
from brevpipe.config.schema import GROUP_KINDS, parameters
from tests.conftest import compose_config

PRESETS = [(g, o) for g, options in group_options([CONF_DIR]).items() if g in GROUP_KINDS
           for o in options]  # fmt: skip


@pytest.fixture(scope="module")
def schema() -> dict:
    found = schema_of(None)
    jsonschema.Draft202012Validator.check_schema(found)
    return found


def test_the_default_config_and_every_preset_validate(schema: dict) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    plain, _ = compose_plain([])
    validator.validate(plain)
    for group, option in PRESETS:
        composed, choices = compose_plain([f"{group}={option}"])
        assert choices[group] == option
        validator.validate(composed)
        assert option in schema["properties"][group]["x-brevpipe-options"]["enum"]


def test_a_misspelt_key_or_a_wrong_type_is_rejected_by_schema_and_compose(schema: dict) -> None:
    validator = jsonschema.Draft202012Validator(schema)
    plain, _ = compose_plain([])
    for path, value in (("trainer.epocs", 3), ("trainer.epochs", "many"),
                        ("loader.target_size", ["a", 1]), ("seed", "x"), ("runtime.cahce", 1)):
        bad = copy.deepcopy(plain)
        node = bad
        *parents, leaf = path.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
        assert not validator.is_valid(bad), path
    for override in ("trainer.epochs=many", "trainer.epocs=3", "model.filterz=[1]",
                     "loader.target_size=[a,b]", "augmenter=tf_light augmenter.rotate=lots",
                     "seed=abc", "runtime.deterministic=maybe", "job.rot=x",
                     "storage.timeout_s=soon"):
        with pytest.raises(ConfigCompositionException):
            compose_config(override.split())


@pytest.mark.parametrize("component", [c for c in REGISTRY if c.kind in GROUP_KINDS],
                         ids=lambda c: f"{c.kind}:{c.name}")  # fmt: skip
def test_every_component_round_trips_its_settings(component) -> None:
    """Contract: its settings make a structured config whose defaults its own JSON Schema
    accepts, and a config of those defaults builds the component (runtime values added)."""
    from brevpipe.config.components import instantiate
    from brevpipe.config.schema import component_schema, config_class

    defaults = OmegaConf.to_container(OmegaConf.structured(config_class(component)))
    jsonschema.validate({k: v for k, v in defaults.items() if v != "???"},
                        {**component_schema(component), "required": []})  # fmt: skip
    runtime = {"seed": 1} if "seed" in component.runtime else {}
    if component.kind == "dataset" and component.name == "folder":
        defaults["url"] = str(CONF_DIR)
    built = instantiate(defaults, **runtime)
    assert built is not None
    if component.kind == "model":
        assert callable(built)  # a partial: the job adds input_shape and num_classes


def test_no_default_is_declared_twice() -> None:
    """A preset only changes values: none repeats its component's default."""
    for group, option in PRESETS:
        preset = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{option}.yaml"))
        component = REGISTRY.get(preset_component([CONF_DIR], group, option))
        defaults = {p.name: p.default for p in parameters(component)}
        repeated = [k for k, v in preset.items() if k in defaults and defaults[k] == v]
        assert not repeated, f"conf/{group}/{option}.yaml repeats defaults {repeated}"


def test_one_preset_schema_and_the_command_import_neither_tensorflow_nor_mlflow() -> None:
    code = (
        "import sys, json, io, contextlib\n"
        "from brevpipe.commands.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    assert main(['schema', 'model=resnet50']) == 0\n"
        "    assert main(['schema']) == 0\n"
        "print(json.dumps({'tf': 'tensorflow' in sys.modules, 'mlflow': 'mlflow' in sys.modules,"
        " 'out': out.getvalue()}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)  # fmt: skip
    found = json.loads(result.stdout.splitlines()[-1])
    assert not found["tf"] and not found["mlflow"]
    resnet = json.loads(found["out"][: found["out"].index("\n}\n") + 3])
    assert resnet["properties"]["architecture"]["default"] == "resnet50"
    assert resnet["x-brevpipe-option"] == "resnet50" and "input_shape" not in resnet["properties"]
    bad = subprocess.run([sys.executable, "-m", "brevpipe", "schema", "widget"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 1 and "not a config group" in bad.stderr
    assert "Traceback" not in bad.stderr
