"""Components used by tests through ``_target_`` (as a user's own package would be)."""

from __future__ import annotations

import time
from pathlib import Path

import keras


class RaiseAtEpoch(keras.callbacks.Callback):
    """Simulates a crash: raises at the end of epoch ``epoch`` (1-based). With ``switch``, only
    while that file exists, once (it is removed): the config stays the same for the crashed
    run, its resumption and an uninterrupted run."""

    def __init__(self, epoch: int = 1, switch: str | None = None) -> None:
        super().__init__()
        self.epoch = epoch
        self.switch = Path(switch) if switch else None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 < self.epoch:
            return
        if self.switch is not None:
            if not self.switch.exists():
                return
            self.switch.unlink()
        raise RuntimeError(f"simulated crash after epoch {epoch + 1}")


class WaitAtEpoch(keras.callbacks.Callback):
    """Holds training at the end of epoch ``epoch`` (1-based): creates the file ``reached``,
    then waits until the file ``release`` exists (a test does something meanwhile)."""

    def __init__(self, epoch: int, reached: str, release: str, timeout_s: float = 300) -> None:
        super().__init__()
        self.epoch, self.timeout_s = epoch, timeout_s
        self.reached, self.release = Path(reached), Path(release)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 != self.epoch:
            return
        self.reached.touch()
        deadline = time.monotonic() + self.timeout_s
        while not self.release.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.release} did not appear in {self.timeout_s} s")
            time.sleep(0.1)


class FillDiskAtEpoch(keras.callbacks.Callback):
    """Fills the device of ``folder`` at the end of epoch ``epoch`` (1-based) with the file
    ``folder/filler``, while the file ``switch`` exists (it is removed): a job root that runs
    out of space during training, and a resume with the same config that does not."""

    def __init__(self, folder: str, switch: str, epoch: int = 1) -> None:
        super().__init__()
        self.folder, self.switch, self.epoch = Path(folder), Path(switch), epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if epoch + 1 != self.epoch or not self.switch.exists():
            return
        self.switch.unlink()
        with (self.folder / "filler").open("wb") as filler:
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:  # full
                pass
