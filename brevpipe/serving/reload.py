"""``brevpipe serve models:/NAME@ALIAS --reload-alias SECONDS``: follow a moved alias.

A thread asks the registry every SECONDS which version the alias holds; when it moved, the new
version is loaded and warmed beside the one being served, then swapped in at once
(:meth:`ModelService.swap`): no request is dropped, and each is answered by one model. A
registry that does not answer, or a version that does not load, keeps the current model and is
logged; the next poll tries again (a version that did not load: once the alias moves on).
"""

from __future__ import annotations

import logging
import threading

from brevpipe.errors import ConfigError
from brevpipe.serving.resolve import parse_mlflow_uri, registered_version, resolve_model
from brevpipe.serving.service import ModelService

log = logging.getLogger("brevpipe")


class AliasWatcher:
    """Polls the alias of ``uri`` and swaps the service's model when it moves."""

    def __init__(self, service: ModelService, uri: str, every_s: float, job_root: str,
                 tracking_uri: str | None) -> None:  # fmt: skip
        if parse_mlflow_uri(uri)[0] != "alias":
            raise ConfigError(f"--reload-alias follows an alias: give MODEL as "
                              f"models:/<name>@<alias>, not {uri}.")  # fmt: skip
        if every_s <= 0:
            raise ConfigError(f"--reload-alias {every_s:g}: give seconds above 0.")
        self.service, self.uri, self.every_s = service, uri, float(every_s)
        self.job_root, self.tracking_uri = job_root, tracking_uri
        self._failed: int | None = None  # a version that did not load
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="alias-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def check(self) -> bool:
        """One poll: swap in the version the alias holds now if it moved; whether it did. A
        version that failed to load is not tried again until the alias moves on."""
        now = registered_version(self.uri, self.job_root, self.tracking_uri)
        now.pop("archive_sha256", None)  # resolve_model checks it
        served = self.service.predictor.source.get("version")
        if now.get("version") in (served, self._failed):
            return False
        try:
            predictor = resolve_model(f"models:/{now['name']}/{now['version']}", self.job_root,
                                      self.tracking_uri)  # fmt: skip
            predictor.source = {"model": self.uri, **now}
            self.service.swap(predictor)
        except Exception:
            self._failed = now.get("version")
            raise
        log.info("%s moved: now serving version %s (was %s)", self.uri, now["version"], served)
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - keep serving the current model
                log.warning("%s: cannot follow the alias now (%s: %s); still serving version %s",
                            self.uri, type(exc).__name__, str(exc)[:300],
                            self.service.predictor.source.get("version"))  # fmt: skip
