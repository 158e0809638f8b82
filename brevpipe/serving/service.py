"""``brevpipe serve MODEL``: an HTTP prediction service (FastAPI) for an exported model.

Endpoints: ``POST /predict`` (synchronous), ``POST /tasks`` + ``GET /tasks/{id}`` (asynchronous,
a thread pool), ``GET /model`` (the archive's model.json), ``GET /health`` (no token), and
FastAPI's ``/docs`` and ``/openapi.json``. Every endpoint except ``/health`` needs a bearer JWT
(HS256, with ``exp``) signed with the service's secret (``brevpipe serve --make-token`` prints
one); ``--public-docs`` opens the docs.

Uploads are decoded by the model's own :class:`ImageLoader` (``decode`` then ``normalize``, the
steps the input pipeline runs for an image without augmentation), so scores equal
``brevpipe predict`` on the same files. One model call runs at a time (a lock).

Limits: a body over ``max_bytes`` gets 413; more images than ``max_batch`` in one request get
413 too (the request is too large to take, whatever its bytes); an image that does not decode,
or whose header announces more than ``max_pixels``, gets 422 naming it (``/tasks``: the task
ends in ``FAILURE`` naming it); more than ``max_pending`` tasks waiting get 503 (Retry-After).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import jwt
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from brevpipe.errors import BrevpipeError, ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np

    from brevpipe.serving.predictor import Predictor

DEFAULT_SECRET_ENV = "BREVPIPE_JWT_SECRET"
MIN_SECRET_BYTES = 32  # HS256 wants a key of at least 256 bits (RFC 7518, 3.2)
ALGORITHM = "HS256"
MAX_FINISHED_TASKS = 1000  # finished tasks kept for GET /tasks/{id}; the oldest go first
MAX_PENDING_TASKS = 256  # tasks queued or running (each holds its images): more get 503
MAX_PIXELS = 25_000_000  # per image, read from its header before decoding (decompression bombs)
DECODE_SLOTS = 4  # images decoded at once, whatever the number of request threads
STATES = ("PENDING", "STARTED", "SUCCESS", "FAILURE")
NEW_SECRET = "python -c 'import secrets; print(secrets.token_hex(32))'"


# -- tokens --------------------------------------------------------------------------------
def check_secret(secret: str) -> str:
    """``secret`` if it is long enough for HS256, else a :class:`ConfigError`."""
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"the JWT secret has {len(secret.encode())} bytes; use at least "
                          f"{MIN_SECRET_BYTES} (make one with: {NEW_SECRET}).")  # fmt: skip
    return secret


def make_token(secret: str, expires_in: int = 3600, subject: str | None = None) -> str:
    """A bearer token for the service: JWT HS256 expiring ``expires_in`` seconds from now."""
    import jwt

    if expires_in < 1:
        raise ConfigError(f"expires_in={expires_in}: a token must expire; use 1 second or more.")
    now = int(time.time())
    claims: dict[str, Any] = {"iat": now, "exp": now + int(expires_in)}
    if subject:
        claims["sub"] = subject
    return jwt.encode(claims, check_secret(secret), algorithm=ALGORITHM)


def read_secret(secret_env: str = DEFAULT_SECRET_ENV, secret_file: str | None = None) -> str:
    """The JWT secret from ``secret_file`` (stripped) or the environment variable."""
    if secret_file:
        path = Path(secret_file).expanduser()
        if not path.is_file():
            raise ConfigError(f"--secret-file {secret_file} does not exist: give a file holding "
                              f"the secret, or set {secret_env}.")  # fmt: skip
        return check_secret(path.read_text().strip())
    secret = os.environ.get(secret_env, "").strip()
    if not secret:
        raise ConfigError(f"no JWT secret: set {secret_env} (e.g. export {secret_env}=$("
                          f"{NEW_SECRET})) or pass --secret-file PATH.")  # fmt: skip
    return check_secret(secret)


# -- the model behind the service ----------------------------------------------------------
class ServiceBusy(BrevpipeError):
    """Too many asynchronous tasks are waiting (HTTP 503)."""


class ModelService:
    """Decodes uploads with the model's ImageLoader and scores them, one model call at a time;
    runs asynchronous tasks in a thread pool and remembers their state."""

    def __init__(
        self,
        predictor: Predictor,
        task_threads: int = 2,
        max_pending: int = MAX_PENDING_TASKS,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        import tensorflow as tf

        if predictor.metadata.get("task") == "segmentation":
            raise ConfigError("this is a segmentation model: the service returns class scores "
                              "per image; serve a classification model.")  # fmt: skip
        self.predictor = predictor
        self._model_lock = threading.Lock()
        self._tasks_lock = threading.Lock()
        self._decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
        self.max_pending = int(max_pending)
        self.max_pixels = int(max_pixels)
        self.tasks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.executor = ThreadPoolExecutor(max(1, task_threads), thread_name_prefix="brevpipe-task")
        loader = predictor.loader

        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def decode(data: Any) -> Any:
            # the input pipeline's steps for one image: decode_source, resize, (no
            # augmentation), normalize
            return loader.normalize(loader.decode(data))

        self._decode = decode
        self._decode.get_concrete_function()  # trace once, now
        import numpy as np

        self.predict_batch(np.zeros((1, *loader.output_shape), np.float32))  # warm the model

    def decode(self, name: str, data: bytes) -> np.ndarray:
        """One image as the model sees it; a :class:`DataError` naming it if it does not decode."""
        from brevpipe.data.loader import _clean_tf_message

        if not data:
            raise DataError(f"image {name!r} is empty.")
        self._check_pixels(name, data)
        try:
            with self._decode_slots:
                return self._decode(data).numpy()
        except Exception as exc:  # noqa: BLE001 - any decode failure makes the image unusable
            reason = _clean_tf_message(getattr(exc, "message", None) or str(exc) or "")
            if reason == "cannot decode":  # graph-mode errors keep their detail in the log
                reason = "not a readable JPEG, PNG, BMP, GIF or WebP file (corrupt or truncated?)"
            raise DataError(f"image {name!r} cannot be decoded: {reason}.") from None

    def _check_pixels(self, name: str, data: bytes) -> None:
        """Refuse images whose header announces more than ``max_pixels`` (a few kilobytes of
        PNG can decode to gigabytes), and images whose header Pillow cannot read: no decoder
        sees an image of unknown size."""
        import io

        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
        except Image.DecompressionBombError:  # Pillow's own limit, far above ours
            raise DataError(f"image {name!r} is over the limit of {self.max_pixels} pixels "
                            "(--max-pixels): send a smaller image.") from None  # fmt: skip
        except Exception:  # noqa: BLE001 - whatever Pillow raises on a header it cannot read
            raise DataError(f"image {name!r} cannot be decoded: not a readable JPEG, PNG, BMP, "
                            "GIF or WebP file (corrupt or truncated?).") from None  # fmt: skip
        if width * height > self.max_pixels:
            raise DataError(f"image {name!r} is {width}x{height} pixels, over the limit of "
                            f"{self.max_pixels} (--max-pixels): send a smaller image.")  # fmt: skip

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """Scores for preprocessed images; the model is called by one thread at a time."""
        with self._model_lock:
            return self.predictor.predict(images)

    def predict(self, images: Sequence[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """``[{name, predicted, scores: {class: score}}]`` for ``(name, encoded bytes)`` pairs."""
        import numpy as np

        batch = np.stack([self.decode(name, data) for name, data in images])
        scores = self.predict_batch(batch)
        decided = self.predictor.decide(scores)
        classes = self.predictor.classes
        return [
            {"name": name, "predicted": label,
             "scores": {c: float(v) for c, v in zip(classes, row, strict=True)}}
            for (name, _), label, row in zip(images, decided, scores, strict=True)
        ]  # fmt: skip

    # -- asynchronous tasks ----------------------------------------------------------------
    def submit(self, images: Sequence[tuple[str, bytes]]) -> str:
        """Queue a prediction; returns its task id. Each image's header is checked first
        (:class:`DataError`); :class:`ServiceBusy` when ``max_pending`` tasks are already queued
        or running."""
        for name, data in images:  # refused now (422), not in the task: no decoder sees them
            if not data:
                raise DataError(f"image {name!r} is empty.")
            self._check_pixels(name, data)
        task_id = uuid.uuid4().hex
        with self._tasks_lock:
            busy = sum(v["state"] in ("PENDING", "STARTED") for v in self.tasks.values())
            if busy >= self.max_pending:
                raise ServiceBusy(f"{busy} tasks are queued or running (the limit, "
                                  "--max-pending); retry later.")  # fmt: skip
            self.tasks[task_id] = {"task_id": task_id, "state": "PENDING"}
            self._forget_old()
        self.executor.submit(self._run, task_id, list(images))
        return task_id

    def task(self, task_id: str) -> dict[str, Any] | None:
        with self._tasks_lock:
            record = self.tasks.get(task_id)
            return dict(record) if record is not None else None

    def _set(self, task_id: str, **fields: Any) -> None:
        with self._tasks_lock:
            if task_id in self.tasks:
                self.tasks[task_id].update(fields)

    def _run(self, task_id: str, images: list[tuple[str, bytes]]) -> None:
        self._set(task_id, state="STARTED")
        try:
            result = {"predictions": self.predict(images)}
        except BrevpipeError as exc:
            self._set(task_id, state="FAILURE", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - reported in the task, the service goes on
            self._set(task_id, state="FAILURE", error=f"{type(exc).__name__}: {exc}")
        else:
            self._set(task_id, state="SUCCESS", result=result)

    def _forget_old(self) -> None:
        finished = [k for k, v in self.tasks.items() if v["state"] in ("SUCCESS", "FAILURE")]
        for key in finished[: max(0, len(finished) - MAX_FINISHED_TASKS)]:
            del self.tasks[key]

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


# -- request bodies ------------------------------------------------------------------------
REQUEST_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                              "description": "one or more image files"},  # fmt: skip
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["images"],
                "properties": {
                    "images": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["data"],
                            "properties": {
                                "name": {"type": "string"},
                                "data": {"type": "string", "description": "base64 bytes"},
                            },
                        },
                    }
                },
            }
        },
    },
}


MAX_NAME_CHARS = 255


def image_name(name: Any, index: int) -> str:
    """An image's name as the responses carry it: text that encodes as UTF-8 (a lone surrogate
    does not), at most :data:`MAX_NAME_CHARS` characters, no control characters; else 422."""
    if name is None or name == "":
        return f"image-{index}"
    if not isinstance(name, str):
        raise HTTPException(422, f"images[{index}]: 'name' must be a string.")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPException(422, f"images[{index}]: 'name' is not valid Unicode (a lone "
                                 "surrogate?): send UTF-8 text.") from None  # fmt: skip
    if len(name) > MAX_NAME_CHARS:
        raise HTTPException(422, f"images[{index}]: 'name' has {len(name)} characters; at most "
                                 f"{MAX_NAME_CHARS}.")  # fmt: skip
    return "".join(c if c.isprintable() else "\ufffd" for c in name)


async def read_images(request: Request, max_batch: int, max_bytes: int) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of the images in a multipart (field ``files``) or JSON request."""
    from starlette.requests import ClientDisconnect
    from starlette.requests import Request as StarletteRequest

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"request body of {int(declared)} bytes is over the limit of "
                                 f"{max_bytes} bytes (--max-bytes); send fewer or smaller "
                                 "images per request.")  # fmt: skip
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise HTTPException(413, f"request body is over the limit of {max_bytes} bytes "
                                         "(--max-bytes); send fewer or smaller images per "
                                         "request.")  # fmt: skip
            chunks.append(chunk)
    except ClientDisconnect:  # the client went away mid-body: nobody reads this, no traceback
        raise HTTPException(400, "the connection closed before the whole body arrived.") from None
    body = b"".join(chunks)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    images: list[tuple[str, bytes]] = []
    if kind == "multipart/form-data":

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        form = await StarletteRequest(request.scope, replay).form(
            max_files=max_bytes // 64 + 1, max_fields=1000
        )
        try:
            for i, item in enumerate(form.getlist("files")):
                if isinstance(item, str):
                    raise HTTPException(422, f"field 'files' #{i} is text, not a file: send "
                                             "images as file parts (curl -F files=@image.png).")
                images.append((image_name(item.filename, i), await item.read()))
        finally:
            await form.close()
    elif kind == "application/json":
        try:
            payload = json.loads(body)
            entries = payload["images"]
            if not isinstance(entries, list):
                raise TypeError("images is not a list")
        except RecursionError:  # "[" * 100000: nested deeper than the parser goes
            raise HTTPException(422, "JSON body is nested too deeply: send "
                                     '{"images": [{"name": "...", "data": "<base64>"}]}.') from None
        except (ValueError, KeyError, TypeError) as exc:
            raise HTTPException(422, 'JSON body must be {"images": [{"name": "...", "data": '
                                     f'"<base64>"}}, ...]}} ({exc}).') from None
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise HTTPException(422, f"images[{i}] must be an object "
                                         '{"name": "...", "data": "<base64>"}.')  # fmt: skip
            name = image_name(entry.get("name"), i)
            data = entry.get("data")
            if not isinstance(data, str):
                raise HTTPException(422, f"images[{i}] needs a base64 string in 'data'.")
            try:
                images.append((name, base64.b64decode(data, validate=True)))
            except (binascii.Error, ValueError):
                raise HTTPException(422, f"images[{i}] ({name!r}): 'data' is not valid "
                                         "base64.") from None  # fmt: skip
    else:
        raise HTTPException(415, f"content type {kind or 'none'!r}: send multipart/form-data "
                                 "(field 'files') or application/json ({\"images\": [...]}).")
    if not images:
        raise HTTPException(422, "no images: send one or more files in the multipart field "
                                 "'files', or JSON {\"images\": [{\"name\", \"data\"}]}.")
    if len(images) > max_batch:
        raise HTTPException(413, f"{len(images)} images in one request; at most {max_batch} "
                                 "(--max-batch): split the request.")  # fmt: skip
    return images


BEARER = HTTPBearer(auto_error=False, description="JWT (HS256, with exp): serve --make-token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]


# -- responses -----------------------------------------------------------------------------
class Prediction(BaseModel):
    name: str
    predicted: str
    scores: dict[str, float]


class Predictions(BaseModel):
    predictions: list[Prediction]


class Problem(BaseModel):
    """An error: ``detail`` names the thing and the fix."""

    detail: str


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses for error status codes, each with the :class:`Problem` body."""
    meaning = {
        400: "a multipart body that cannot be parsed",
        401: "missing, expired or invalid bearer token",
        404: "no such task",
        413: "body or image count over the limits",
        415: "neither multipart/form-data nor application/json",
        422: "a malformed body, or an image that does not decode or is too large (named)",
        503: "too many tasks waiting (Retry-After)",
    }
    return {code: {"model": Problem, "description": meaning[code]} for code in codes}


class TaskCreated(BaseModel):
    task_id: str


class TaskState(BaseModel):
    task_id: str
    state: str
    result: Predictions | None = None
    error: str | None = None


# -- the app -------------------------------------------------------------------------------
def create_app(
    predictor: Predictor,
    secret: str,
    max_batch: int = 64,
    max_bytes: int = 10 * 2**20,
    task_threads: int = 2,
    max_pending: int = MAX_PENDING_TASKS,
    max_pixels: int = MAX_PIXELS,
    public_docs: bool = False,
) -> FastAPI:
    """The FastAPI app serving ``predictor``; tokens are checked against ``secret``. The docs
    (``/docs``, ``/openapi.json``) need a token too unless ``public_docs``."""
    import warnings

    from PIL import Image

    from brevpipe import __version__

    # Pillow warns about large headers; the service refuses them itself (--max-pixels)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    check_secret(secret)
    if max_batch < 1 or max_bytes < 1:
        raise ConfigError(f"max_batch={max_batch}, max_bytes={max_bytes}: use 1 or more.")
    service = ModelService(predictor, task_threads, max_pending, max_pixels)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="brevpipe prediction service",
        version=__version__,
        description="Scores images with an exported brevpipe model. Authorize with a bearer "
        "token from `brevpipe serve --make-token`.",
        lifespan=lifespan,
        **({} if public_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}),
    )
    app.state.service = service
    refused = {"WWW-Authenticate": "Bearer"}

    def authorize(credentials: Credentials) -> None:
        if credentials is None:
            raise HTTPException(401, "missing bearer token: send 'Authorization: Bearer <token>' "
                                "(brevpipe serve --make-token prints one).", headers=refused)
        try:
            jwt.decode(credentials.credentials, secret, algorithms=[ALGORITHM],
                       options={"require": ["exp"]})  # fmt: skip
        except jwt.ExpiredSignatureError:
            raise HTTPException(401, "bearer token expired: get a new one (brevpipe serve "
                                     "--make-token).", headers=refused) from None
        except jwt.InvalidSignatureError:
            raise HTTPException(401, "bearer token signature does not match this service's "
                                     "secret: make the token with the same secret.",
                                headers=refused) from None  # fmt: skip
        except jwt.MissingRequiredClaimError:
            raise HTTPException(401, "bearer token has no 'exp' claim: tokens must expire "
                                     "(brevpipe serve --make-token --expires-in SECONDS).",
                                headers=refused) from None  # fmt: skip
        except jwt.InvalidTokenError as exc:
            raise HTTPException(401, f"invalid bearer token ({exc}): make one with brevpipe "
                                     "serve --make-token.", headers=refused) from None

    secured = [Depends(authorize)]
    body_doc = {"requestBody": REQUEST_BODY}

    @app.exception_handler(DataError)
    async def undecodable(_: Request, exc: DataError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ServiceBusy)
    async def busy(_: Request, exc: ServiceBusy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    if not public_docs:  # the same docs, behind the token

        @app.get("/openapi.json", include_in_schema=False, dependencies=secured)
        def openapi() -> dict[str, Any]:
            return app.openapi()

        @app.get("/docs", include_in_schema=False, dependencies=secured)
        def docs() -> Any:
            from fastapi.openapi.docs import get_swagger_ui_html

            return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: no token needed."""
        return {"status": "ok"}

    @app.get("/model", tags=["service"], dependencies=secured, responses=problems(401))
    def model() -> dict[str, Any]:
        """The model's metadata (model.json of its archive): classes, input shape,
        preprocessing."""
        return predictor.metadata

    @app.post("/predict", tags=["predict"], dependencies=secured, response_model=Predictions,
              openapi_extra=body_doc, responses=problems(400, 401, 413, 415, 422))  # fmt: skip
    async def predict(request: Request) -> dict[str, Any]:
        """Score the images now: multipart ``files`` or JSON ``{"images": [{name, data}]}``."""
        images = await read_images(request, max_batch, max_bytes)
        return {"predictions": await run_in_threadpool(service.predict, images)}

    @app.post("/tasks", tags=["predict"], dependencies=secured, status_code=202,
              response_model=TaskCreated, openapi_extra=body_doc,
              responses=problems(400, 401, 413, 415, 422, 503))  # fmt: skip
    async def create_task(request: Request) -> dict[str, str]:
        """Score the images in the background; poll ``GET /tasks/{task_id}``."""
        images = await read_images(request, max_batch, max_bytes)
        return {"task_id": await run_in_threadpool(service.submit, images)}

    @app.get("/tasks/{task_id}", tags=["predict"], dependencies=secured,
             response_model=TaskState, response_model_exclude_none=True,
             responses=problems(401, 404))  # fmt: skip
    def get_task(task_id: str) -> dict[str, Any]:
        """``state``: PENDING, STARTED, SUCCESS (with ``result``) or FAILURE (with ``error``)."""
        record = service.task(task_id)
        if record is None:
            raise HTTPException(404, f"no task {task_id!r} (unknown, or finished long ago: the "
                                     f"last {MAX_FINISHED_TASKS} finished tasks are kept).")
        return record

    return app


# -- the command ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brevpipe serve",
        description="Serve a model over HTTP: POST /predict, POST /tasks, GET /tasks/{id}, "
        "GET /model, GET /health, docs at /docs. Requests need 'Authorization: Bearer <JWT>'.",
        epilog="examples:\n"
        f"  export {DEFAULT_SECRET_ENV}=$({NEW_SECRET})\n"
        "  brevpipe serve jobs/<id>/artifacts/model/saved_model.tar.gz --port 8080\n"
        "  TOKEN=$(brevpipe serve --make-token --expires-in 3600)\n"
        "  curl -H \"Authorization: Bearer $TOKEN\" -F files=@a.png localhost:8080/predict",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", nargs="?",
                        help="archive URL, job bucket URL, job id, or MLflow URI (as for "
                        "brevpipe predict); not needed with --make-token")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this machine)")
    parser.add_argument("--port", type=int, default=8080, help="default 8080")
    parser.add_argument("--secret-env", default=DEFAULT_SECRET_ENV, metavar="NAME",
                        help=f"environment variable holding the JWT secret (default "
                        f"{DEFAULT_SECRET_ENV})")  # fmt: skip
    parser.add_argument("--secret-file", metavar="PATH", help="read the JWT secret from a file")
    parser.add_argument("--max-batch", type=int, default=64, metavar="N",
                        help="most images per request (more: 413); default 64")
    parser.add_argument("--max-bytes", type=int, default=10 * 2**20, metavar="N",
                        help="largest request body (larger: 413); default 10 MiB")
    parser.add_argument("--workers-threads", type=int, default=2, metavar="N",
                        help="threads running /tasks in the background; default 2")
    parser.add_argument("--max-pending", type=int, default=MAX_PENDING_TASKS, metavar="N",
                        help=f"most /tasks queued or running (more: 503); default "
                        f"{MAX_PENDING_TASKS}")  # fmt: skip
    parser.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="N",
                        help=f"largest image in pixels (larger: 422); default {MAX_PIXELS}")
    parser.add_argument("--public-docs", action="store_true",
                        help="serve /docs and /openapi.json without a token")
    parser.add_argument("--job-root", default="./jobs", metavar="URL",
                        help="where job ids are looked up (default ./jobs)")
    parser.add_argument("--tracking-uri", metavar="URI", help="MLflow store for runs:/ and "
                        "models:/ URIs (default as for brevpipe predict)")
    parser.add_argument("--make-token", action="store_true",
                        help="print a bearer token signed with the secret, and exit")
    parser.add_argument("--expires-in", type=int, default=3600, metavar="SECONDS",
                        help="lifetime of --make-token's token (default 3600)")
    return parser


def main(argv: list[str]) -> int:
    """``brevpipe serve``; returns the exit code (0 ok, 1 error, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.make_token and not args.model:
        parser.error("give MODEL (or --make-token)")
    for flag in ("max_batch", "max_bytes", "workers_threads", "expires_in", "max_pending",
                 "max_pixels"):  # fmt: skip
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} {getattr(args, flag)}: use 1 or more")
    try:
        secret = read_secret(args.secret_env, args.secret_file)
        if args.make_token:
            print(make_token(secret, args.expires_in))
            return 0
        import uvicorn

        from brevpipe.serving.batch import resolve_model

        predictor = resolve_model(args.model, args.job_root, args.tracking_uri)
        app = create_app(predictor, secret, args.max_batch, args.max_bytes, args.workers_threads,
                         args.max_pending, args.max_pixels, args.public_docs)  # fmt: skip
    except BrevpipeError as exc:
        print(f"brevpipe serve: error: {exc}", file=sys.stderr)
        return 1
    print(f"brevpipe serve: {args.model} at http://{args.host}:{args.port} (docs: /docs)",
          file=sys.stderr)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
