"""The stage contract: stage functions stay registered where pipelines name them, and a
generated dataset's seed comes from the job's root seed unless the config sets one."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from brevpipe.config.components import REGISTRY, instantiate
from brevpipe.engine.context import StageContext
from brevpipe.engine.seeding import component_seed
from brevpipe.jobs.job import Job
from brevpipe.stages import classification, common, generic, segmentation
from tests.conftest import compose_config


def context(tmp_path: Path, seed: int) -> StageContext:
    job = Job(root=str(tmp_path / "jobs"), config={"seed": seed}, seed=seed, name="unit",
              pipeline="p")  # fmt: skip
    return StageContext(job, "samples", seed=1, url=str(tmp_path / "stage"))


def shapes(tmp_path: Path, **settings) -> dict:
    return {"_target_": "dataset:shapes", "samples_per_class": 2, "image_size": 16,
            "cache_dir": str(tmp_path / "datasets"), **settings}  # fmt: skip


@pytest.mark.parametrize("module", [generic, classification, segmentation])
def test_every_stage_function_is_registered(module) -> None:
    functions = {name for name, f in vars(module).items() if inspect.isfunction(f)
                 and f.__module__ == module.__name__ and not name.startswith("_")}  # fmt: skip
    registered = {c.target.rsplit(".", 1)[1]: c for c in REGISTRY.of_kind("stage")
                  if c.target.rsplit(".", 1)[0] == module.__name__}  # fmt: skip
    assert set(registered) == functions
    for name, component in registered.items():
        assert component.load() is getattr(module, name)
        assert REGISTRY.get(component.public_name) is component


def test_pipelines_name_their_stages_by_public_name() -> None:
    from omegaconf import OmegaConf

    from brevpipe.config.compose import CONF_DIR

    for path in sorted((CONF_DIR / "pipeline").glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        stages = (node.get("pipeline") or node)["stages"]  # segmentation.yaml is global
        for name, stage in stages.items():
            component = REGISTRY.get(stage["_target_"])
            assert stage["_target_"] == component.public_name, (path.name, name)
            assert component.kind == "stage"
    # what records named before: the stages shared by both pipelines moved to generic.py
    assert REGISTRY.get("brevpipe.stages.classification.export") is REGISTRY.get("stage:export")


def test_a_null_dataset_seed_is_the_jobs_and_a_set_one_is_kept(tmp_path: Path) -> None:
    assert compose_config([])["dataset"]["seed"] is None, "conf/dataset/shapes.yaml: null"
    first, second = context(tmp_path, 3), context(tmp_path, 4)
    derived = common.dataset_component(first, shapes(tmp_path, seed=None))
    assert derived.seed == first.seed_for("dataset") == component_seed(3, "dataset")
    other = common.dataset_component(second, shapes(tmp_path, seed=None))
    assert other.seed == component_seed(4, "dataset") != derived.seed
    assert other.folder != derived.folder, "the cache folder follows the seed"
    # output.json files written before seeds were derived say seed: 0 and keep their images
    kept = common.dataset_component(first, shapes(tmp_path, seed=0))
    assert kept.seed == 0
    assert kept.folder == instantiate(shapes(tmp_path)).folder, "no job: seed 0"
