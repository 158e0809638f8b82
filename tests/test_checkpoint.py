"""A training checkpoint is whole whenever the job dies: its marker names the state it was
written with, even when the process ends between the two writes of the next epoch."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from brevpipe.engine import checkpoint as checkpoint_module
from brevpipe.engine.checkpoint import MARKER, Checkpoint
from brevpipe.io import storage


class Killed(BaseException):
    """The process ending where it stands (nothing catches it on the way)."""


def tiny_model(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def weights(model) -> list[np.ndarray]:
    return [np.array(v.numpy()) for v in model.variables]


def checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("checkpoint")]


def shifted(model, by: float) -> list[np.ndarray]:
    """Move every weight by ``by`` (what an epoch of training would do); return them."""
    for variable in model.variables:
        variable.assign(variable.numpy() + by)
    return weights(model)


def test_a_kill_between_the_state_and_its_marker_resumes_the_marked_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    url = str(tmp_path / "checkpoint")
    model = tiny_model()
    writers = set(checkpoint_threads())
    saving = Checkpoint(url, "key")
    after_1 = shifted(model, 1.0)
    saving.save(model, 1, {"loss": 1.0})
    saving.wait()

    write_json = storage.write_json

    def die_at_the_marker(target: str, obj: object) -> None:
        if target.endswith(MARKER):
            raise Killed
        write_json(target, obj)

    shifted(model, 1.0)  # epoch 2: its state is written, the process dies before its marker
    monkeypatch.setattr(checkpoint_module.storage, "write_json", die_at_the_marker)
    saving.save(model, 2, {"loss": 0.5})
    with pytest.raises(Killed):
        saving.wait()
    monkeypatch.undo()
    saving.close()  # its writer thread ends here, not with the garbage collector
    assert set(checkpoint_threads()) <= writers

    resumed = tiny_model(seed=1)
    restoring = Checkpoint(url, "key")
    assert restoring.restore(resumed) == 1
    for got, want in zip(weights(resumed), after_1, strict=True):
        np.testing.assert_array_equal(got, want)  # epoch 1's state, as its marker says
    assert restoring.history == [{"epoch": 1, "loss": 1.0}]

    # training on: epoch 2 again, then epoch 3; the states their markers left behind go
    shifted(resumed, 1.0)
    restoring.save(resumed, 2, {"loss": 0.5})
    after_3 = shifted(resumed, 1.0)
    restoring.save(resumed, 3, {"loss": 0.25})
    restoring.close()
    files = sorted(p.name for p in Path(url).iterdir())
    assert files == [MARKER, "state-00003.npz"]
    marker = json.loads((Path(url) / MARKER).read_text())
    assert marker["epoch"] == 3 and marker["state"] == "state-00003.npz"
    again = tiny_model(seed=2)
    assert Checkpoint(url, "key").restore(again) == 3
    for got, want in zip(weights(again), after_3, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_checkpoint_written_before_markers_named_their_state_still_resumes(
    tmp_path: Path,
) -> None:
    """brevpipe before 2026-12-07 wrote ``state.npz`` and a marker without ``state``."""
    url = tmp_path / "checkpoint"
    url.mkdir()
    model = tiny_model()
    saved = shifted(model, 0.5)
    model_variables = [*model.variables, *model.optimizer.variables]
    buffer = io.BytesIO()
    np.savez(buffer, **{f"v{i}": np.array(v.numpy()) for i, v in enumerate(model_variables)})
    (url / "state.npz").write_bytes(buffer.getvalue())
    (url / MARKER).write_text(json.dumps({"key": "key", "epoch": 4, "history": []}))

    resumed = tiny_model(seed=1)
    restoring = Checkpoint(str(url), "key")
    assert restoring.restore(resumed) == 4
    for got, want in zip(weights(resumed), saved, strict=True):
        np.testing.assert_array_equal(got, want)
    restoring.save(resumed, 5, {"loss": 0.1})
    restoring.close()
    assert sorted(p.name for p in url.iterdir()) == [MARKER, "state-00005.npz"]


@pytest.mark.parametrize("named", ["../../outside.npz", "/etc/passwd", "state.json", 7])
def test_a_marker_naming_a_file_outside_its_folder_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, named: object
) -> None:  # fmt: skip
    url = tmp_path / "job" / "checkpoint"
    url.mkdir(parents=True)
    planted = tmp_path / "outside.npz"
    np.savez(planted, v0=np.zeros(1))
    (url / MARKER).write_text(json.dumps({"key": "key", "epoch": 9, "state": named,
                                          "history": []}))  # fmt: skip
    model = tiny_model()
    before = weights(model)
    assert Checkpoint(str(url), "key").restore(model) == 0
    assert "names no state file" in caplog.text
    for got, want in zip(weights(model), before, strict=True):
        np.testing.assert_array_equal(got, want)
