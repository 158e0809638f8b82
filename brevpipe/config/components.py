"""The component registry: every object a config may build, by kind and short name.

A component's public name is ``kind:name`` (``trainer:trainer``, ``model:small_cnn``): the
presets, the pipelines and every output.json name components so, and a module can move without
breaking a record. A config may also write the short ``name`` (where one kind uses it) or any
dotted path Hydra can import; :data:`ALIASES` keeps names that records used before.
brevpipe's own components are registered below; another package registers its own through the
``brevpipe.components`` entry-point group, whose value is a function taking this module's
:class:`Registry`::

    # pyproject.toml of the user's package
    [project.entry-points."brevpipe.components"]
    my_project = "my_project.components:register"

    # my_project/components.py
    def register(registry):
        registry.add("model", "my_net", "my_project.models.build_my_net", runtime=MODEL_RUNTIME)

The registry is also the trust boundary: a config that brevpipe did not compose itself (an
output.json given to ``brevpipe rerun``) may build registered components only.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from brevpipe.errors import ConfigError

log = logging.getLogger("brevpipe")
ENTRY_POINT_GROUP = "brevpipe.components"
# Parameters a model builder gets from the job at build time, not from its config.
MODEL_RUNTIME = ("input_shape", "num_classes", "multi_label")
# The kinds of component, one table. The config groups come first, in the config's order: each
# is a folder of presets (conf/<kind>/), a node of the composed config (a field of
# engine.settings.Settings) and a group of brevpipe schema. The others are built inside them.
GROUP_KINDS = ("dataset", "split", "sampler", "loader", "augmenter", "encoder", "model",
               "trainer", "tracking")  # fmt: skip
KINDS = (*GROUP_KINDS, "stage", "optimizer", "callback")


@dataclass(frozen=True)
class Component:
    """One registered component: ``kind``, short ``name`` and dotted ``target``.

    ``runtime`` names the parameters the caller passes when it builds the component (the
    model's input shape, a seed), which its config therefore does not declare.
    """

    kind: str
    name: str
    target: str
    runtime: tuple[str, ...] = ()
    package: str = "brevpipe"

    @property
    def public_name(self) -> str:
        """``kind:name``: how configs and records name this component."""
        return f"{self.kind}:{self.name}"

    def load(self) -> Any:
        """The class or function itself (imports its module)."""
        from hydra.utils import get_object

        return get_object(self.target)


class Registry:
    """Components by kind and name; entry points of other packages are read on first use."""

    def __init__(self) -> None:
        self._by_target: dict[str, Component] = {}
        self._by_name: dict[tuple[str, str], Component] = {}
        self._entry_points_loaded = False

    def add(
        self, kind: str, name: str, target: str, *, runtime: Sequence[str] = (),
        package: str | None = None,
    ) -> Component:  # fmt: skip
        """Register ``target`` (a dotted path) as the component ``kind:name``."""
        if kind not in KINDS:
            raise ConfigError(f"cannot register {name!r}: unknown kind {kind!r}; use one of "
                              f"{', '.join(KINDS)}.")  # fmt: skip
        if "." not in target:
            raise ConfigError(f"cannot register {kind}:{name}: target {target!r} must be a "
                              "dotted path such as my_package.module.Class.")  # fmt: skip
        component = Component(kind, name, target, tuple(runtime),
                              package or target.split(".", 1)[0])  # fmt: skip
        known = self._by_name.get((kind, name))
        if known and known.target != target:
            raise ConfigError(f"{kind}:{name} is registered twice ({known.target} by "
                              f"{known.package}, {target} by {component.package}); rename one.")
        self._by_name[(kind, name)] = component
        self._by_target.setdefault(target, component)
        return component

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                register = entry.load()
                register(self)
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - name the package that failed
                raise ConfigError(f"the brevpipe.components entry point {entry.name!r} "
                                  f"({entry.value}) failed: {exc}") from exc  # fmt: skip

    def __iter__(self) -> Iterator[Component]:
        self._load_entry_points()
        return iter(sorted(self._by_name.values(), key=lambda c: (c.kind, c.name)))

    def of_kind(self, kind: str) -> list[Component]:
        return [c for c in self if c.kind == kind]

    def find(self, reference: str) -> Component | None:
        """The component named by a ``_target_`` value: a dotted path, ``name`` or
        ``kind:name``; None when nothing is registered under it."""
        self._load_entry_points()
        reference = ALIASES.get(reference, reference)
        if ":" in reference:
            kind, _, name = reference.partition(":")
            return self._by_name.get((kind, name))
        if "." in reference:
            return self._by_target.get(reference)
        matches = [c for (_, name), c in self._by_name.items() if name == reference]
        if len(matches) > 1:
            kinds = ", ".join(f"{c.kind}:{c.name}" for c in matches)
            raise ConfigError(f"_target_: {reference!r} names several components ({kinds}); "
                              "write kind:name.")  # fmt: skip
        return matches[0] if matches else None

    def get(self, reference: str, where: str = "_target_") -> Component:
        """Like :meth:`find`, but an unknown reference is a ConfigError with close matches."""
        component = self.find(reference)
        if component is not None:
            return component
        raise ConfigError(f"{where}: {self.unknown(reference)}")

    def unknown(self, reference: str) -> str:
        """One line on an unregistered reference: its kind's close matches, how to register."""
        kind = reference.partition(":")[0] if ":" in reference else None
        pool = [c for c in self if kind in (None, c.kind)]
        names = [c.target for c in pool] + [f"{c.kind}:{c.name}" for c in pool]
        close = difflib.get_close_matches(reference, names, n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        return (f"{reference!r} is not a registered component.{hint} Register it from your "
                f"package with an entry point in the {ENTRY_POINT_GROUP!r} group (see brevpipe "
                "init), or list the registered ones with brevpipe schema --components.")


def _builtins(registry: Registry) -> None:
    add = registry.add
    add("dataset", "shapes", "brevpipe.data.shapes.ShapesDataset")
    add("dataset", "folder", "brevpipe.data.samples.FolderDataset")
    add("split", "default", "brevpipe.data.split.SampleSplit", runtime=("seed",))
    add("sampler", "sampler", "brevpipe.data.sampler.Sampler", runtime=("seed",))
    add("loader", "image_loader", "brevpipe.data.loader.ImageLoader")
    add("augmenter", "none", "brevpipe.data.augment.NoAugmenter")
    add("augmenter", "tf", "brevpipe.data.augment.TfAugmenter")
    add("augmenter", "albumentations", "brevpipe.data.augment.AlbumentationsAugmenter")
    add("encoder", "onehot", "brevpipe.data.encoder.OneHotEncoder")
    add("encoder", "multihot", "brevpipe.data.encoder.MultiHotEncoder")
    add("model", "small_cnn", "brevpipe.models.small_cnn.build", runtime=MODEL_RUNTIME)
    add("model", "keras_application", "brevpipe.models.applications.build",
        runtime=MODEL_RUNTIME)  # fmt: skip
    add("model", "unet", "brevpipe.models.unet.build", runtime=MODEL_RUNTIME)
    add("trainer", "trainer", "brevpipe.models.training.Trainer")
    add("tracking", "mlflow", "brevpipe.integrations.tracking.TrackingSettings")
    for module, names in {
        "generic": ("split_samples", "export"),
        "classification": ("find_samples", "train", "evaluate", "preview", "report"),
        "segmentation": ("find_samples", "train", "evaluate", "report"),
        "testing": ("load_model", "report"),
    }.items():  # fmt: skip
        for name in names:
            public = name if module == "generic" else f"{module}.{name}"
            add("stage", public, f"brevpipe.stages.{module}.{name}")
    for name in ("Adam", "AdamW", "SGD", "RMSprop", "Nadam", "Adagrad"):
        add("optimizer", name.lower(), f"keras.optimizers.{name}", runtime=("learning_rate",))
    # no CSVLogger, ModelCheckpoint, BackupAndRestore: a file name from an untrusted output.json
    # would write (or truncate) any file
    for name in ("EarlyStopping", "ReduceLROnPlateau", "TerminateOnNaN"):
        add("callback", name.lower(), f"keras.callbacks.{name}")


# Names that records and configs used before a component moved (or a stage was shared): the one
# table that keeps every earlier output.json rerunnable.
ALIASES = {
    "brevpipe.train.Trainer": "trainer:trainer",
    "brevpipe.tracking.TrackingSettings": "tracking:mlflow",
    "brevpipe.stages.classification.split_samples": "stage:split_samples",
    "brevpipe.stages.classification.export": "stage:export",
    "stage:classification.split_samples": "stage:split_samples",
    "stage:classification.export": "stage:export",
}
REGISTRY = Registry()
_builtins(REGISTRY)


def targets(tree: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(config path, _target_)`` in a plain config tree, lists and nesting included."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                yield where, str(value)
            else:
                yield from targets(value, where)
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            yield from targets(value, f"{path}[{i}]")


def check_registered(tree: Any, allow: Sequence[str] = (), path: str = "") -> None:
    """Refuse any ``_target_`` in ``tree`` that is not a registered component (nor one of the
    exact dotted names in ``allow``)."""
    for where, target in targets(tree, path):
        if target in allow:
            continue
        try:
            found = REGISTRY.find(target)
        except ConfigError as exc:
            raise ConfigError(f"refusing {where}: {exc}") from None
        if found is None and ":" in target:  # a public name: its package is not installed
            raise ConfigError(f"refusing {where}: {REGISTRY.unknown(target)} Install the "
                              f"package that registers {target} and run again.")  # fmt: skip
        if found is None:
            raise ConfigError(
                f"refusing {where}: {REGISTRY.unknown(target)} If you trust this output.json "
                f"and its component, allow it once: rerun.allow_targets=[{target}]"
            )


def check_names(tree: Any, path: str = "") -> None:
    """Before a job starts: every short name in ``tree`` is registered and every other dotted
    ``_target_`` can be imported (one clear line instead of a failure inside a stage)."""
    from hydra.utils import get_object

    for where, target in targets(tree, path):
        if REGISTRY.find(target) is not None:
            continue
        if "." not in target or ":" in target:
            raise ConfigError(f"{where}: {REGISTRY.unknown(target)}")
        try:
            get_object(target)
        except Exception as exc:  # noqa: BLE001 - any import failure: name the target
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"{where}: cannot import {target!r} ({cause}); check the name, "
                              "and that its package is installed.") from None


def modernize(tree: Any) -> Any:
    """A copy of a plain config tree (an output.json's) whose registered components are named
    by their public ``kind:name``, whatever name the record used."""
    if isinstance(tree, dict):
        out = {k: modernize(v) for k, v in tree.items()}
        target = out.get("_target_")
        component = REGISTRY.find(target) if isinstance(target, str) else None
        if component is not None:
            out["_target_"] = component.public_name
        return out
    if isinstance(tree, list | tuple):
        return [modernize(v) for v in tree]
    return tree


def expand(tree: Any) -> Any:
    """A copy of a plain config tree whose public, short and earlier names are dotted paths
    (what Hydra's ``instantiate`` imports)."""
    if isinstance(tree, dict):
        out = {k: expand(v) for k, v in tree.items()}
        target = out.get("_target_")
        if isinstance(target, str) and (target in ALIASES or "." not in target or ":" in target):
            out["_target_"] = REGISTRY.get(target).target
        return out
    if isinstance(tree, list | tuple):
        return [expand(v) for v in tree]
    return tree


def instantiate(config: Any, *args: Any, **kwargs: Any) -> Any:
    """Hydra's ``instantiate`` of a plain config mapping, with short names expanded."""
    from hydra.utils import instantiate as hydra_instantiate
    from omegaconf import DictConfig, OmegaConf

    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config, resolve=True)
    return hydra_instantiate(expand(config), *args, **kwargs)


def allowed_target_list(allow: Any) -> list[str]:
    """``rerun.allow_targets`` checked: exact dotted names only (no prefixes, no wildcards)."""
    names = [str(a) for a in (allow or [])]
    for name in names:
        parts = name.split(".")
        if len(parts) < 2 or not all(p.isidentifier() for p in parts):
            raise ConfigError(f"rerun.allow_targets: {name!r} is not a dotted name such as "
                              "my_package.module.Class (prefixes are not accepted).")
    return names
