"""Pipeline declarations: ordering, validation, seeds and cache keys."""

from __future__ import annotations

import pytest

from brevpipe.engine.dag import Pipeline
from brevpipe.engine.seeding import derive_seed
from brevpipe.errors import ConfigError


def declaration(**stages: dict) -> dict:
    return {"name": "p", "stages": stages}


def stage(inputs: list[str] = (), outputs: list[str] = (), **params) -> dict:
    return {"_target_": "x.y", "inputs": list(inputs), "outputs": list(outputs), **params}


def test_order_puts_producers_first_and_keeps_declaration_order_for_ties() -> None:
    pipeline = Pipeline.from_config(
        declaration(
            report=stage(["metrics", "model"], ["report"]),
            train=stage(["data"], ["model"]),
            load=stage([], ["data"]),
            evaluate=stage(["model", "data"], ["metrics"]),
            notes=stage([], ["notes"]),
        )
    )
    assert [s.name for s in pipeline.order()] == ["load", "notes", "train", "evaluate", "report"]


def test_cycle_is_a_config_error_naming_the_cycle() -> None:
    with pytest.raises(ConfigError, match="has a cycle: .*a.*b"):
        Pipeline.from_config(declaration(a=stage(["y"], ["x"]), b=stage(["x"], ["y"])))


def test_unknown_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="stage 'b' needs input 'z', which no stage outputs"):
        Pipeline.from_config(declaration(a=stage([], ["x"]), b=stage(["z"], ["y"])))


def test_duplicate_output_and_missing_target_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="declared by both stage 'a' and stage 'b'"):
        Pipeline.from_config(declaration(a=stage([], ["x"]), b=stage([], ["x"])))
    with pytest.raises(ConfigError, match="needs a '_target_'"):
        Pipeline.from_config(declaration(a={"outputs": ["x"]}))
    with pytest.raises(ConfigError, match="declares no stages"):
        Pipeline.from_config({"name": "empty", "stages": {}})


def test_stage_seeds_are_derived_per_stage_and_root_seed() -> None:
    pipeline = Pipeline.from_config(declaration(a=stage([], ["x"]), b=stage(["x"], ["y"])))
    a, b = pipeline.stages["a"], pipeline.stages["b"]
    assert a.seed(1) == a.seed(1) == derive_seed(1, "stage", "a")
    assert len({a.seed(1), b.seed(1), a.seed(2), b.seed(2)}) == 4


def test_cache_keys_follow_config_inputs_seed_and_code() -> None:
    def keys(lr: float = 0.1, seed: int = 1, code: str = "v1") -> dict[str, str]:
        pipeline = Pipeline.from_config(
            declaration(
                load=stage([], ["data"], url="/data"),
                train=stage(["data"], ["model"], lr=lr),
                other=stage([], ["other"]),
            )
        )
        return pipeline.cache_keys(seed, code)

    base = keys()
    assert base == keys()
    changed_lr = keys(lr=0.2)
    assert changed_lr["load"] == base["load"] and changed_lr["train"] != base["train"]
    assert keys(seed=2)["load"] != base["load"]
    assert keys(code="v2")["other"] != base["other"]
