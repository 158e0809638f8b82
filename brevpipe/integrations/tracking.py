"""The MLflow mirror of a job: params, live metrics, tags, artifacts and the model.

MLflow is imported only when tracking is on, and never blocks the job: the run is opened and
the epochs are logged by a background thread, or for ``brevpipe run``'s job by a process of
its own running the same tracker (:mod:`brevpipe.integrations.mirror_process`); a store being
created, a busy sqlite file or a server that went away delay the mirror, not training. When the
job ends, the run is made to match the job's output.json by
:func:`brevpipe.integrations.mirror.sync_job`, which adds only what is missing, and ended with
the job's status. If MLflow is still unreachable then, the job completes as always,
output.json's ``mlflow.pending`` says what is not mirrored, and one line names
``brevpipe jobs sync``, which replays the bucket later.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from brevpipe.integrations import mirror, mirror_process, mlflow_store, registry
from brevpipe.io import storage
from brevpipe.jobs.job import Job, JobStatus, NullTracker, Tracker, now
from brevpipe.jobs.layout import default_tracking_uri

log = logging.getLogger("brevpipe")

FLUSH_S = 10.0  # at the job's end, how long the live mirror may take to send what it holds
# MLflow's import and store (2-3 s of Python) would compete with TensorFlow's import and the
# model's tracing for the interpreter: the live mirror opens the run once the first epoch's
# metrics arrive (training runs in TensorFlow's native code then), or this long after the job
# opened, or when it ends, whichever comes first.
OPEN_AFTER_S = 30.0
# MLflow's HTTP client retries a server that went away for minutes inside one request; the
# mirror retries on its own (RETRY_MAX_S) and must be able to end within FLUSH_S, so its
# requests give up sooner unless the user set MLflow's variable.
HTTP_RETRIES = "2"
RETRY_MAX_S = 30.0  # the longest wait between two tries of a store that failed


def tracking_uri_for(uri: str | None, job_root: str) -> str:
    """``tracking.uri`` when set, else the default store for ``job_root``."""
    return uri or default_tracking_uri(job_root)


def register_command(job: Job, uri: str) -> str:
    """The command that registers this job's model later (into store ``uri``)."""
    command = f"brevpipe models register {job.id} --root {job.root}"
    return command if uri == default_tracking_uri(job.root) else f"{command} --tracking-uri {uri}"


def sync_command(job: Job, uri: str) -> str:
    """The command that completes this job's mirror later (into store ``uri``)."""
    command = f"brevpipe jobs sync {job.id} --root {job.root}"
    return command if uri == default_tracking_uri(job.root) else f"{command} --tracking-uri {uri}"


def section(uri: str, experiment: str, parent: dict[str, Any]) -> dict[str, Any]:
    """A job's ``mlflow`` section as its mirror starts."""
    mlflow = {"tracking_uri": uri, "experiment": experiment}
    if parent.get("run_id"):
        mlflow["parent_run_id"] = parent["run_id"]
        mlflow["overrides"] = parent.get("overrides", "")
    return mlflow


class MlflowTracker:
    """Mirrors one job into one MLflow run through :class:`mlflow.MlflowClient`, from a
    background thread while the job runs and by a replay of its output.json at the end."""

    def __init__(
        self, job: Job, uri: str, experiment: str, parent: dict[str, Any] | None = None,
        register: str | None = None,
    ) -> None:  # fmt: skip
        self.job = job
        self.uri = uri
        self.experiment = experiment
        self.parent = parent or {}
        self.register = register
        self.client: Any = None
        self.run_id: str | None = None
        self.error: str | None = None
        self._pending: list[tuple[str, float, int, int]] = []  # (name, value, ms, step) to send
        self._known: set[tuple[str, int, str]] = set()  # points the run holds already
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._go = threading.Event()  # the run may open now (OPEN_AFTER_S)
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.job.mlflow = section(self.uri, self.experiment, self.parent)
        self.job.listeners.append(self)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
        # the job's last lines name its run; MLflow's own "View run" line would repeat it
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        self._thread = threading.Thread(target=storage.carried(self._work), name="mlflow-mirror",
                                        daemon=True)
        self._thread.start()

    def open_now(self) -> None:
        """Open the run without waiting for the first epoch (a process of its own, where
        MLflow competes with nothing)."""
        self._go.set()

    def on_metrics(self, metrics: dict[str, float], step: int | None) -> None:
        """Queue the points for the background thread: the caller (training) never waits (nor
        imports MLflow)."""
        stamp = int(time.time() * 1000)
        with self._lock:
            self._pending += [(k, v, stamp, step or 0) for k, v in metrics.items()]
        self._go.set()
        self._wake.set()

    # -- the background thread --------------------------------------------------------------
    def _work(self) -> None:
        self._go.wait(OPEN_AFTER_S)
        delay = 1.0
        while True:
            try:
                if self.run_id is None:
                    self._open_run()
                self._send_pending()
                if self.error:
                    log.info("MLflow mirror at %s answers again", self.uri)
                    self.error = None
                delay = 1.0
            except Exception as exc:  # noqa: BLE001 - a store away: try again later
                self._note_failure("starting the run" if self.run_id is None
                                   else "logging metrics", exc)  # fmt: skip
                if self._closing.wait(delay):
                    return
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            if self._closing.is_set():
                return
            self._wake.wait()
            self._wake.clear()

    def _open_run(self) -> None:
        """Open the job's run (a resumed job's own, when the store has it) with its tags and
        params; its metrics come from the queue."""
        mlflow_store.reachable(self.uri)
        self.client = mlflow_store.open_client(self.uri)
        output = {**self._snapshot(), "history": [], "metrics": {}}
        result = mirror.sync_job(self.client, self.uri, self.experiment, output,
                                 self.job.bucket_url, final=False)  # fmt: skip
        if not result.created:
            self._known = mirror.logged_points(self.client, result.run_id)
        self.run_id = result.run_id
        self.job.mlflow.update({"experiment_id": result.experiment_id, "run_id": self.run_id})
        log.info("MLflow run %s (%s)", self.run_id, self.uri)

    def _snapshot(self) -> dict[str, Any]:
        """The job's output.json as it is now (the job's thread may be adding to it)."""
        for _ in range(10):
            try:
                return self.job.to_output()
            except RuntimeError:  # a dict changed size while it was copied
                time.sleep(0.01)
        return self.job.to_output()

    def _send_pending(self) -> None:
        with self._lock:
            batch = self._pending[: mirror.MAX_METRICS_PER_BATCH]
        if not batch or self.run_id is None:
            return
        from mlflow.entities import Metric

        new = [Metric(*point) for point in batch
               if mirror.point_key(point[0], point[1], point[3]) not in self._known]  # fmt: skip
        if new:
            mlflow_store.reachable(self.uri)  # fail fast: MLflow's client retries for minutes
            mlflow_store.retrying(self.client.log_batch, self.run_id, metrics=new)
        self._known.update(mirror.point_key(m.key, m.value, m.step) for m in new)
        with self._lock:
            del self._pending[: len(batch)]
        if self._pending:
            self._wake.set()

    def _note_failure(self, what: str, exc: BaseException) -> None:
        reason = f"{what}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        if self.error is None:
            log.warning("MLflow mirror at %s failed while %s (the job goes on; everything "
                        "stays in its bucket, and is mirrored when MLflow answers again)",
                        self.uri, reason)  # fmt: skip
        self.error = reason

    # -- the end of the job -----------------------------------------------------------------
    def finish(self, job: Job) -> None:
        """Let the live mirror send what it holds (for at most FLUSH_S), then make the run
        match the job's output.json and end it; record in output.json what is still missing."""
        self._closing.set()
        self._go.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(FLUSH_S)
        try:
            if self._thread is not None and self._thread.is_alive():
                # still inside a request: replaying beside it could log its points twice
                raise TimeoutError(f"the live mirror did not finish within {FLUSH_S:g} s")
            mlflow_store.reachable(self.uri)
            client = self.client or mlflow_store.open_client(self.uri)
            result = mirror.sync_job(client, self.uri, self.experiment, job.to_output(),
                                     job.bucket_url)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - MLflow failure never fails the job
            self._note_failure("mirroring the job's end", exc)
            job.mlflow["pending"] = ["run" if self.run_id is None else "end"]
            job.mlflow["error"] = self.error
            log.warning("MLflow run of job %s is incomplete (%s); once MLflow is reachable, "
                        "run: %s", job.id, self.error, sync_command(job, self.uri))  # fmt: skip
        else:
            job.mlflow.update({"experiment_id": result.experiment_id, "run_id": result.run_id,
                               "synced": now()})  # fmt: skip
            if result.model_uri:
                job.mlflow["model_uri"] = result.model_uri
            for note in result.notes:
                log.warning("MLflow mirror: %s", note)
            job.mlflow.pop("pending", None)
            job.mlflow.pop("error", None)
            self._register(client, job, result.run_id)
        if self.register and "registry" not in job.mlflow and job.status == JobStatus.COMPLETED:
            self._registration_failed(job, str(self.error))
        job.write_output()

    def _registration_failed(self, job: Job, reason: str) -> None:
        job.mlflow["registry"] = {"name": self.register, "error": reason}
        log.warning("registering the model of job %s as %r failed (%s); once the registry "
                    "answers, run: %s", job.id, self.register, reason,
                    register_command(job, self.uri))  # fmt: skip

    def _register(self, client: Any, job: Job, run_id: str) -> None:
        """``tracking.register``: the job's model as a new version (a sweep's trials wait for
        the sweep's end, which registers the best). A failure never fails the job: output.json
        says why and ``brevpipe models register`` retries."""
        if not self.register or job.status != JobStatus.COMPLETED:
            return
        if job.extra.get("sweep") and self.parent.get("run_id"):  # the sweep's end registers
            job.mlflow["registry"] = {"name": self.register, "deferred": "sweep"}
            return
        try:
            job.mlflow["registry"] = registry.register_run(client, self.register, run_id,
                                                           job.to_output())  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - registering never fails the job
            if isinstance(exc, registry.RegistryError):
                reason = str(exc)
            else:
                reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
            self._registration_failed(job, reason)
        else:
            entry = job.mlflow["registry"]
            log.info("model registered: %s version %s (@%s)", entry["name"], entry["version"],
                     entry["alias"])  # fmt: skip


@dataclass
class TrackingSettings:
    """Where each job is mirrored in MLflow.

    ``uri``: null = ``sqlite:///`` beside the job root, or any tracking URI (``http://host:5000``);
    ``experiment``: null = the pipeline's name; ``enabled: false`` turns the mirror off.

    Settings:
    ``enabled``: mirror each job into MLflow (false: no tracking)
    ``register``: register the exported model as a new version of this registered model, alias
    candidate (a sweep: its best trial, when it ends); null: no registration
    """

    enabled: bool = True
    uri: str | None = None
    experiment: str | None = None
    register: str | None = None

    def tracker(self, job: Job, parent: dict[str, Any] | None = None) -> Tracker:
        """The job's mirror (what the runner calls: it knows no MLflow)."""
        return make_tracker(asdict(self), job, parent)


def make_tracker(
    tracking: dict[str, Any], job: Job, parent: dict[str, Any] | None = None
) -> Tracker:
    """The job's mirror; ``parent`` (``{run_id, overrides}``) nests it in a sweep's run."""
    if not tracking.get("enabled", False):
        return NullTracker()
    uri = tracking_uri_for(tracking.get("uri"), job.root)
    if parent and parent.get("tracking_uri") not in (None, uri):
        parent = None  # the sweep's run lives in another store
    register = tracking.get("register")
    if register is not None:
        registry.check_name(register)  # before the job starts
    experiment = tracking.get("experiment") or job.pipeline
    if mirror_process.OWN_PROCESS.get():
        settings = {"uri": uri, "experiment": experiment, "parent": parent or {},
                    "register": register}  # fmt: skip
        commands = {"sync": sync_command(job, uri), "register": register_command(job, uri)}
        return mirror_process.ProcessMirror(job, settings, section(uri, experiment, parent or {}),
                                            commands)  # fmt: skip
    return MlflowTracker(job, uri, experiment, parent, register)
