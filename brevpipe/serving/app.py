"""``brevpipe serve``'s HTTP app (FastAPI) around a :class:`ModelService`.

Endpoints: ``POST /predict`` (synchronous), ``POST /tasks`` + ``GET /tasks/{id}`` (asynchronous,
a thread pool), ``GET /model`` (the archive's model.json), ``GET /health`` (no token), and
FastAPI's ``/docs`` and ``/openapi.json``. Every endpoint except ``/health`` needs a bearer JWT
(:mod:`brevpipe.serving.auth`); ``public_docs`` opens the docs. Limits and refusals: an
undecodable or too large image gets 422 naming it, more than ``max_pending`` tasks waiting 503
(Retry-After); bodies: :mod:`brevpipe.serving.bodies`.
"""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from PIL import Image
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from brevpipe import __version__
from brevpipe.errors import ConfigError, DataError
from brevpipe.serving.auth import check_secret, token_problem
from brevpipe.serving.bodies import REQUEST_BODY, read_images
from brevpipe.serving.service import (
    MAX_FINISHED_TASKS,
    MAX_PENDING_TASKS,
    MAX_PIXELS,
    ModelService,
    ServiceBusy,
)

if TYPE_CHECKING:
    from brevpipe.serving.predictor import Predictor

BEARER = HTTPBearer(auto_error=False, description="JWT (HS256, with exp): serve --make-token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
REFUSED = {"WWW-Authenticate": "Bearer"}  # the headers of a 401
BODY_DOC = {"requestBody": REQUEST_BODY}
Secured = list[Any]  # the dependencies that check the bearer token


# -- responses -----------------------------------------------------------------------------
# Docstrings here would become schema descriptions in /openapi.json: only Problem has one.
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

    # Pillow warns about large headers; the service refuses them itself (--max-pixels)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    check_secret(secret)
    if max_batch < 1 or max_bytes < 1:
        raise ConfigError(f"max_batch={max_batch}, max_bytes={max_bytes}: use 1 or more.")
    service = ModelService(predictor, task_threads, max_pending, max_pixels)
    app = _new_app(service, public_docs)
    secured = [Depends(_authorizer(secret))]
    _add_error_handlers(app)
    if not public_docs:  # the same docs, behind the token
        _add_private_docs(app, secured)
    _add_service_routes(app, service, secured)
    _add_predict_routes(app, service, secured, max_batch, max_bytes)
    return app


def _new_app(service: ModelService, public_docs: bool) -> FastAPI:
    """The app, its ``state.service``, and FastAPI's own docs unless ``public_docs``."""

    app = FastAPI(
        title="brevpipe prediction service",
        version=__version__,
        description="Scores images with an exported brevpipe model. Authorize with a bearer "
        "token from `brevpipe serve --make-token`.",
        lifespan=_closing(service),
        **({} if public_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}),
    )
    app.state.service = service
    return app


def _closing(service: ModelService) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan that closes ``service`` when the app stops."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    return lifespan


def _authorizer(secret: str) -> Callable[[Credentials], None]:
    """A dependency that refuses (401) requests without a valid bearer token."""

    def authorize(credentials: Credentials) -> None:
        token = credentials.credentials if credentials is not None else None
        problem = token_problem(token, secret)
        if problem is not None:
            raise HTTPException(401, problem, headers=REFUSED)

    return authorize


def _add_error_handlers(app: FastAPI) -> None:
    """An image that does not decode: 422; too many tasks waiting: 503 with Retry-After."""

    @app.exception_handler(DataError)
    async def undecodable(_: Request, exc: DataError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ServiceBusy)
    async def busy(_: Request, exc: ServiceBusy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})


def _add_private_docs(app: FastAPI, secured: Secured) -> None:
    """``/openapi.json`` and ``/docs`` behind the token."""

    @app.get("/openapi.json", include_in_schema=False, dependencies=secured)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=secured)
    def docs() -> Any:
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)


def _add_service_routes(app: FastAPI, service: ModelService, secured: Secured) -> None:
    """``GET /health`` (no token) and ``GET /model``."""

    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness: no token needed."""
        return {"status": "ok"}

    @app.get("/model", tags=["service"], dependencies=secured, responses=problems(401))
    def model() -> dict[str, Any]:
        """The model's metadata (model.json of its archive): classes, input shape,
        preprocessing; and ``source``: the MODEL it was loaded from and, for a registered
        model, its ``name``, ``version`` (the one served now) and ``alias``."""
        predictor = service.predictor
        return {**predictor.metadata, "source": predictor.source}


def _add_predict_routes(app: FastAPI, service: ModelService, secured: Secured, max_batch: int,
                        max_bytes: int) -> None:  # fmt: skip
    """``POST /predict``, ``POST /tasks`` and ``GET /tasks/{task_id}``."""

    @app.post("/predict", tags=["predict"], dependencies=secured, response_model=Predictions,
              openapi_extra=BODY_DOC, responses=problems(400, 401, 413, 415, 422))  # fmt: skip
    async def predict(request: Request) -> dict[str, Any]:
        """Score the images now: multipart ``files`` or JSON ``{"images": [{name, data}]}``."""
        images = await read_images(request, max_batch, max_bytes)
        return {"predictions": await run_in_threadpool(service.predict, images)}

    @app.post("/tasks", tags=["predict"], dependencies=secured, status_code=202,
              response_model=TaskCreated, openapi_extra=BODY_DOC,
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
