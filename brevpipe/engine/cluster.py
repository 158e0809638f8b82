"""Which process of a multi-worker job this is: read from ``TF_CONFIG``, without TensorFlow.

``trainer.strategy=multi_worker`` trains one job in several processes (machines), each
started with the same command and a ``TF_CONFIG`` variable naming the cluster and its own
task. They make one job: only the chief writes the job bucket and opens the MLflow run; the
other workers run every stage too (the collective ops of training need all of them), in a
temporary job root of their own that is removed at the end. The chief is TensorFlow's: the
task of type ``chief``, or worker 0 when the cluster has no ``chief``.

TensorFlow is imported only by :func:`multi_worker_strategy`, so that config errors stay fast.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from brevpipe.errors import ConfigError
from brevpipe.io import storage
from brevpipe.jobs import layout
from brevpipe.jobs.liveness import temp_prefix

MULTI_WORKER = "multi_worker"  # the trainer.strategy that spans processes
TRAINING_TASKS = ("chief", "worker")  # the task types that train (no ps, no evaluator)
EXAMPLE = ('{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
           '"task": {"type": "worker", "index": 0}}')  # fmt: skip


@dataclass(frozen=True)
class WorkerRole:
    """This process's task in the cluster: ``task_type`` (chief or worker), its ``index``
    and the number of training processes (``workers``, the chief included)."""

    task_type: str
    index: int
    workers: int
    has_chief_task: bool = False

    @property
    def is_chief(self) -> bool:
        """TensorFlow's rule: the ``chief`` task, or worker 0 when there is no chief task."""
        if self.task_type == "chief":
            return True
        return not self.has_chief_task and self.task_type == "worker" and self.index == 0

    def __str__(self) -> str:
        return f"{self.task_type} {self.index} of {self.workers} processes"


def multi_worker_job(config: Mapping[str, Any]) -> bool:
    """Whether a resolved config trains in several processes (``trainer.strategy``)."""
    trainer = config.get("trainer")
    return isinstance(trainer, Mapping) and trainer.get("strategy") == MULTI_WORKER


def _bad(problem: str) -> ConfigError:
    return ConfigError(
        f"trainer.strategy=multi_worker: {problem}. Start every worker with TF_CONFIG naming "
        f"the cluster and its own task, e.g. TF_CONFIG='{EXAMPLE}' (index 1 on the second "
        "machine), or use trainer.strategy=default|mirrored on one machine."
    )


def worker_role(environ: Mapping[str, str] | None = None) -> WorkerRole:
    """This process's role from ``TF_CONFIG``; a missing or malformed one is a ConfigError."""
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        raise _bad("TF_CONFIG is not set")
    try:
        tf_config = json.loads(text)
    except ValueError as exc:
        raise _bad(f"TF_CONFIG is not JSON ({exc})") from None
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    task = tf_config.get("task") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise _bad("TF_CONFIG needs a 'cluster' and a 'task' object")
    for kind in TRAINING_TASKS:
        hosts = cluster.get(kind, [])
        if not isinstance(hosts, list) or not all(isinstance(h, str) and h for h in hosts):
            raise _bad(f"TF_CONFIG cluster.{kind} must be a list of 'host:port' strings")
    if len(cluster.get("chief", [])) > 1:
        raise _bad("TF_CONFIG names more than one chief")
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in TRAINING_TASKS:
        raise _bad(f"TF_CONFIG task.type is {task_type!r}; multi_worker trains on "
                   f"{' and '.join(TRAINING_TASKS)} tasks")  # fmt: skip
    hosts = cluster.get(task_type, [])
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(hosts):
        raise _bad(f"TF_CONFIG task.index={index!r} is not one of the {len(hosts)} "
                   f"cluster.{task_type} entries")  # fmt: skip
    workers = sum(len(cluster.get(kind, [])) for kind in TRAINING_TASKS)
    return WorkerRole(task_type, index, workers, has_chief_task=bool(cluster.get("chief")))


def is_chief(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process writes the job: without ``TF_CONFIG`` (one process) it does."""
    env = os.environ if environ is None else environ
    return not env.get("TF_CONFIG", "").strip() or worker_role(env).is_chief


def role_of(config: Mapping[str, Any]) -> WorkerRole | None:
    """The role of this process in a multi-worker job (checks TF_CONFIG); None otherwise."""
    return worker_role() if multi_worker_job(config) else None


def scratch_root() -> str:
    """A new local folder standing in for the job root of a worker other than the chief (the
    runner removes it at the end; ``clean_stale_temp`` if the worker was killed)."""
    return tempfile.mkdtemp(prefix=temp_prefix("worker"))


def check_not_resumed(root: str, job_id: str | None) -> None:
    """Refuse to resume a multi-worker job (``job.id`` of a job with stage outputs): the chief
    would load cached stages and its checkpoint while the other workers, whose job roots are
    new, start over. Every worker checks this before TensorFlow connects them, hence before
    the chief writes any stage output: they all decide alike."""
    if not job_id:
        return
    bucket = layout.JobBucket.of(storage.normalize(root), job_id)
    if storage.exists(bucket.artifact(layout.STAGES)):
        raise ConfigError(
            f"job.id={job_id} resumes a job, which trainer.strategy=multi_worker cannot do (only "
            "the chief has its stage outputs and checkpoint): start a new job (drop job.id), "
            "or resume it with trainer.strategy=default."
        )


@functools.cache
def multi_worker_strategy() -> Any:
    """The process's ``tf.distribute.MultiWorkerMirroredStrategy``, made once: TensorFlow
    configures collective ops only before its first op runs, so the runner makes it before
    any stage (it waits until every worker has started)."""
    worker_role()  # a ConfigError naming TF_CONFIG rather than TensorFlow's own
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()
