"""brevpipe's public Python API: what user code, notebooks and other tools import.

Everything else in the package is internal and may move between releases; these names stay
(and records name components by their public ``kind:name``, never by module path)::

    from brevpipe.api import compose, run_job

    job = run_job(compose(["model=small_cnn", "trainer.epochs=5", "seed=7"]))
    print(job.status, job.metrics["devel/accuracy"], job.bucket_url)

:func:`instantiate` builds one component of a config (Hydra's ``instantiate``, knowing the
public names). A package adds components through an entry point whose function gets the
:class:`Registry` (``brevpipe init`` writes one); :func:`load_predictor` scores images with an
exported model.
"""

from __future__ import annotations

from brevpipe.config.components import MODEL_RUNTIME, REGISTRY, Component, Registry, instantiate
from brevpipe.config.compose import compose
from brevpipe.data.augment import AlbumentationsAugmenter, NoAugmenter, TfAugmenter
from brevpipe.data.encoder import MultiHotEncoder, OneHotEncoder
from brevpipe.data.loader import ImageLoader
from brevpipe.data.pipeline import InputPipeline
from brevpipe.data.sampler import Sampler
from brevpipe.data.samples import FolderDataset
from brevpipe.data.shapes import ShapesDataset
from brevpipe.data.split import SampleSplit
from brevpipe.engine.context import StageContext
from brevpipe.engine.runner import run_job
from brevpipe.errors import BrevpipeError, ConfigError
from brevpipe.integrations.lifecycle import set_archived, stop_job
from brevpipe.io import storage
from brevpipe.jobs.details import statistics
from brevpipe.jobs.job import Job, JobStatus
from brevpipe.jobs.layout import JobBucket
from brevpipe.jobs.records import JobRecord, get_job, list_jobs
from brevpipe.serving.predictor import Predictor, load_predictor

__all__ = [
    # jobs
    "compose", "run_job", "Job", "JobStatus", "JobBucket",
    # the jobs of a job root (what brevpipe jobs shows and does)
    "JobRecord", "list_jobs", "get_job", "statistics", "stop_job", "set_archived",
    # extending: components, stages, storage (any fsspec URL)
    "Registry", "REGISTRY", "Component", "MODEL_RUNTIME", "instantiate", "StageContext", "storage",
    # the data layer
    "ShapesDataset", "FolderDataset", "SampleSplit", "Sampler", "ImageLoader", "InputPipeline",
    "OneHotEncoder", "MultiHotEncoder", "NoAugmenter", "TfAugmenter", "AlbumentationsAugmenter",
    # models
    "load_predictor", "Predictor",
    # errors
    "BrevpipeError", "ConfigError",
]  # fmt: skip
