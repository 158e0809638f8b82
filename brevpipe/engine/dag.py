"""Pipeline declarations: stages with inputs and outputs, ordered as a DAG."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from typing import Any

from brevpipe.config.compose import stable_hash
from brevpipe.engine.seeding import stage_seed
from brevpipe.errors import ConfigError


@dataclass(frozen=True)
class StageSpec:
    """One declared stage: ``_target_`` is a function ``(ctx, **inputs, **params) -> outputs``."""

    name: str
    target: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)

    def seed(self, root_seed: int) -> int:
        return stage_seed(root_seed, self.name)


@dataclass
class Pipeline:
    """A named DAG of stages, validated on construction."""

    name: str
    stages: dict[str, StageSpec]

    def __post_init__(self) -> None:
        self.producer: dict[str, str] = {}
        for stage in self.stages.values():
            for output in stage.outputs:
                if output in self.producer:
                    raise ConfigError(
                        f"pipeline '{self.name}': output '{output}' is declared by both stage "
                        f"'{self.producer[output]}' and stage '{stage.name}'; rename one of them."
                    )
                self.producer[output] = stage.name
        for stage in self.stages.values():
            for needed in stage.inputs:
                if needed not in self.producer:
                    known = ", ".join(sorted(self.producer)) or "none"
                    raise ConfigError(
                        f"pipeline '{self.name}': stage '{stage.name}' needs input '{needed}', "
                        f"which no stage outputs (outputs declared: {known})."
                    )
        self.order()  # raises on cycles

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Pipeline:
        """Build from a plain mapping ``{name, stages: {stage: {_target_, inputs, outputs, ...}}}``.

        Every key of a stage other than ``_target_``, ``inputs`` and ``outputs`` is a parameter
        passed to the stage function.
        """
        name = str(cfg.get("name", "pipeline"))
        stages_cfg = cfg.get("stages") or {}
        if not isinstance(stages_cfg, Mapping) or not stages_cfg:
            raise ConfigError(f"pipeline '{name}' declares no stages (expected a 'stages' map).")
        stages = {}
        for stage_name, stage_cfg in stages_cfg.items():
            if not isinstance(stage_cfg, Mapping) or "_target_" not in stage_cfg:
                raise ConfigError(
                    f"pipeline '{name}': stage '{stage_name}' needs a '_target_' "
                    "(the dotted path of its stage function)."
                )
            params = {
                k: v for k, v in stage_cfg.items() if k not in ("_target_", "inputs", "outputs")
            }
            stages[str(stage_name)] = StageSpec(
                name=str(stage_name),
                target=str(stage_cfg["_target_"]),
                inputs=tuple(stage_cfg.get("inputs") or ()),
                outputs=tuple(stage_cfg.get("outputs") or ()),
                params=params,
            )
        return cls(name=name, stages=stages)

    def order(self) -> list[StageSpec]:
        """Stages in an order where each comes after the stages it takes inputs from.

        Ties keep declaration order, so the order is stable for a given declaration.
        """
        position = {name: i for i, name in enumerate(self.stages)}
        graph = {
            stage.name: {self.producer[i] for i in stage.inputs} for stage in self.stages.values()
        }
        sorter = TopologicalSorter(graph)
        try:
            sorter.prepare()
        except CycleError as exc:
            cycle = " -> ".join(exc.args[1])
            raise ConfigError(
                f"pipeline '{self.name}' has a cycle: {cycle}; a stage cannot depend on itself."
            ) from None
        ordered: list[str] = []
        while sorter.is_active():
            ready = sorted(sorter.get_ready(), key=position.__getitem__)
            ordered.extend(ready)
            sorter.done(*ready)
        return [self.stages[name] for name in ordered]

    def cache_keys(self, root_seed: int, code_version: str) -> dict[str, str]:
        """Each stage's cache key: its own config and seed, its inputs' keys, the code version."""
        keys: dict[str, str] = {}
        for stage in self.order():
            keys[stage.name] = stable_hash(
                {
                    "target": stage.target,
                    "params": stage.params,
                    "seed": stage.seed(root_seed),
                    "inputs": {i: keys[self.producer[i]] for i in stage.inputs},
                    "outputs": list(stage.outputs),
                    "code": code_version,
                }
            )
        return keys
