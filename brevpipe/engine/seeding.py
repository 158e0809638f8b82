"""Seeds derived from the root seed by hashing, never from shared global RNG state.

Two rules use it: a stage's seed (:func:`stage_seed`) and a component's (:func:`component_seed`,
``ctx.seed_for(name)`` in a stage).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def derive_seed(root_seed: int, *names: object) -> int:
    """A 31-bit seed that is a pure function of the root seed and the given names.

    >>> derive_seed(42, "train") == derive_seed(42, "train")
    True
    >>> derive_seed(42, "train") != derive_seed(42, "split")
    True
    """
    text = "/".join([str(int(root_seed)), *(str(n) for n in names)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") & 0x7FFFFFFF


# Components are seeded in one namespace shared by every stage, so that a stage that rebuilds
# the training pipeline (the preview) draws what training drew. It is called "train" because
# that is the name seeds were first derived under: changing it would change every job's data.
COMPONENT_NAMESPACE = "train"


def stage_seed(root_seed: int, stage: str) -> int:
    """A stage's own seed: the root seed and the stage's name."""
    return derive_seed(root_seed, "stage", stage)


def component_seed(root_seed: int, component: str) -> int:
    """A component's seed (``sampler``, ``augmenter``, ``dataset``...): the root seed and the
    component's name, the same in every stage."""
    return derive_seed(root_seed, COMPONENT_NAMESPACE, component)


# Keras draws a new layer's initial weights and its dropout seeds from one random state per
# process; jobs side by side in one process seed and build under this lock, so each gets its own.
_KERAS_RANDOM_STATE = threading.RLock()


@contextmanager
def keras_seeded(seed: int) -> Iterator[None]:
    """Seed Keras's random state (and Python's, NumPy's and TensorFlow's) with ``seed`` and keep
    it for the block: build a model in it and its weights are a function of ``seed``."""
    import keras

    with _KERAS_RANDOM_STATE:
        keras.utils.set_random_seed(seed)
        yield
