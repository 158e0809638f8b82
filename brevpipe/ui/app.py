"""The dashboard's web app: FastAPI routes rendering Jinja2 templates (autoescaped), htmx for
live rows (server-sent events) and the form, vega-embed for charts. Every JavaScript and CSS
file is served from ``static/`` (no network)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from brevpipe.errors import BrevpipeError
from brevpipe.integrations.lifecycle import set_archived, stop_job
from brevpipe.io import storage
from brevpipe.jobs.compare import compare
from brevpipe.jobs.details import artifact_files, format_duration, format_value
from brevpipe.reports.charts import training_curves
from brevpipe.ui import confusion, pages, safety
from brevpipe.ui.actions import Actions
from brevpipe.ui.charts import overlaid_curves
from brevpipe.ui.index import JobIndex, Listed
from brevpipe.ui.sweeps import sweep_page

HERE = Path(__file__).parent
log = logging.getLogger("brevpipe.ui")
PAGE_CSP = ("default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self' "
            "'unsafe-inline'; img-src 'self' data:; frame-src 'self'; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'self'")  # fmt: skip
REPORT_CSP = ("sandbox allow-scripts; default-src 'none'; script-src 'unsafe-inline' "
              "'unsafe-eval'; style-src 'unsafe-inline'; img-src data:")  # fmt: skip


MAX_BODY = 200 * 2**20  # Try's uploads (16 images of 10 MiB) and the launch form, at most


def create_app(roots: list[str], guard: safety.Guard, state_dir: Path,
               refresh_s: float = 0.5, host: str = "127.0.0.1") -> FastAPI:  # fmt: skip
    """The dashboard over ``roots``, served on ``host``; launched jobs' logs under
    ``state_dir``."""
    hosts = guard.allowed_hosts(host)
    index = JobIndex(roots, refresh_s)
    actions = Actions(index, state_dir)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=True, undefined=jinja2.ChainableUndefined)  # fmt: skip
    env.filters["duration"] = format_duration
    env.filters["number"] = format_value
    templates = Jinja2Templates(env=env)
    app = FastAPI(title="brevpipe ui", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, {
            "token": guard.token, "errors": dict(index.errors), **context}, status_code=status)

    def found(job_id: str) -> Listed:
        listed = index.find(job_id)
        if listed is None:
            raise HTTPException(404, f"no job {job_id!r} in {', '.join(index.roots)}")
        return listed

    @app.middleware("http")
    async def protect(request: Request, call_next: Any) -> Response:
        if hosts is not None and (request.url.hostname or "") not in hosts:
            return PlainTextResponse("this dashboard answers on its own address only", 400)
        try:
            guard.check_read(request)
            if request.method not in ("GET", "HEAD"):
                guard.check_origin(request)  # before any body is read
                size = request.headers.get("content-length", "")
                if not size.isdecimal() or int(size) > MAX_BODY:
                    raise HTTPException(413, f"a request body needs a length under {MAX_BODY}")
        except HTTPException as exc:
            return PlainTextResponse(exc.detail, exc.status_code)
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if guard.for_reads and request.query_params.get("token"):
            response.set_cookie(safety.COOKIE, guard.token, httponly=True, samesite="strict")
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return render(request, "error.html", exc.status_code, message=str(exc.detail))

    @app.exception_handler(BrevpipeError)
    async def brevpipe_error(request: Request, exc: BrevpipeError) -> Response:
        return render(request, "error.html", 400, message=str(exc))

    @app.get("/", response_class=HTMLResponse)
    def jobs(request: Request) -> Response:
        listed, version = index.snapshot()
        view = pages.jobs_page(listed, dict(request.query_params))
        return render(request, "jobs.html", view=view, version=version)

    @app.get("/events")
    async def events(request: Request, since: int = 0) -> Response:
        """Server-sent events: a job's new row (``job-<id>``) whenever what it shows changes."""

        async def stream() -> Any:
            version, quiet = since, 0
            while not await request.is_disconnected():
                version, changed = await run_in_threadpool(index.changed_since, version)
                for listed in changed:
                    row = pages.row(listed)
                    html = env.get_template("_row.html").render(r=row, token=guard.token)
                    data = "\n".join(f"data: {line}" for line in html.strip().splitlines())
                    yield f"event: {row['event']}\n{data}\n\n"
                quiet = 0 if changed else quiet + 1
                if quiet >= 15:
                    yield ": still here\n\n"
                    quiet = 0
                await asyncio.sleep(min(1.0, index.refresh_s))

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})  # fmt: skip

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job(request: Request, job_id: str) -> Response:
        listed = index.find(job_id)
        if listed is None and (launch := actions.launch_state(job_id)) is not None:
            return render(request, "starting.html", job_id=job_id, launch=launch)
        listed = found(job_id)
        record = listed.record
        history, note = pages.history_rows(record)
        try:
            files = artifact_files(record.bucket)
        except Exception as exc:  # noqa: BLE001 - the bucket cannot be listed: say so
            files, note = [], f"cannot list the artifacts: {type(exc).__name__}"
        return render(request, "job.html", r=pages.row(listed), record=record,
                      config=pages.config_tables(record), stages=pages.stages(record),
                      curves=training_curves(history) if history else None, note=note,
                      files=files, has_report=any(f["path"] == "report.html" for f in files),
                      mlflow=pages.mlflow_link(record), error=record.job.get("error"),
                      lineage=pages.lineage(record))

    @app.get("/jobs/{job_id}/status", response_class=HTMLResponse)
    def status(request: Request, job_id: str) -> Response:
        return render(request, "_status.html", r=pages.row(found(job_id)))

    @app.get("/jobs/{job_id}/files/{path:path}")
    def download(job_id: str, path: str, inline: bool = False) -> Response:
        """An artifact to download; ``inline``: a PNG shown in the page (the overlays)."""
        url = safety.artifact_url(found(job_id).record.bucket, path)
        name = path.rsplit("/", 1)[-1].encode("ascii", "replace").decode().replace('"', "_")
        if storage.is_local(url) and not inline:  # streamed: a model may be large
            return FileResponse(url, media_type="application/octet-stream", filename=name)
        try:
            data = storage.read_bytes(url)
        except (FileNotFoundError, IsADirectoryError):
            raise HTTPException(404, "no such artifact") from None
        if inline and path.endswith(".png") and data.startswith(b"\x89PNG\r\n\x1a\n"):
            return Response(data, media_type="image/png")
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/jobs/{job_id}/report", response_class=HTMLResponse)
    def report(job_id: str) -> Response:
        url = safety.artifact_url(found(job_id).record.bucket, "report.html")
        return HTMLResponse(storage.read_bytes(url),
                            headers={"Content-Security-Policy": REPORT_CSP})  # fmt: skip

    @app.get("/jobs/{job_id}/errors", response_class=HTMLResponse)
    def errors(request: Request, job_id: str) -> Response:
        listed = found(job_id)
        table = confusion.predictions(listed.record.bucket)
        view = confusion.errors_page(table, dict(request.query_params)) if table is not None \
            else None  # fmt: skip
        return render(request, "errors.html", r=pages.row(listed), view=view)

    @app.get("/jobs/{job_id}/image")
    def image(job_id: str, path: str, size: str = "thumb") -> Response:
        png = actions.image(found(job_id), path, full=size == "full")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.post("/jobs/{job_id}/{action}")
    def act(request: Request, job_id: str, action: str,
            token: Annotated[str, Form()] = "") -> Response:  # fmt: skip
        guard.check_write(request, token)
        listed = found(job_id)
        if action == "stop":
            stop_job(listed.root, listed.id)
        elif action in ("archive", "unarchive"):
            set_archived(listed.root, listed.id, action == "archive")
        else:
            raise HTTPException(404, f"no action {action!r}")
        index.forget(listed.id)
        own = f"{request.url.scheme}://{request.headers.get('host', '')}/"
        back = request.headers.get("referer", "")
        return RedirectResponse(back if back.startswith(own) else f"/jobs/{listed.id}",
                                status_code=303)  # fmt: skip

    @app.get("/compare", response_class=HTMLResponse)
    def compare_page(request: Request) -> Response:
        ids = [i for value in request.query_params.getlist("ids") for i in value.split(",") if i]
        listed = [found(i) for i in dict.fromkeys(ids)]
        if len(listed) < 2:
            raise HTTPException(400, "compare needs two or more jobs: /compare?ids=A,B")
        result = compare([item.record for item in listed], changes_only=False)
        short = {item.id[:8] for item in listed}
        label = (lambda i: i[:8]) if len(short) == len(listed) else (lambda i: i)
        histories = {label(item.id): pages.history_rows(item.record)[0] for item in listed}
        return render(request, "compare.html", result=result, jobs=listed,
                      changes_only=request.query_params.get("changes", "1") != "0",
                      curves=overlaid_curves(histories) if any(histories.values()) else None)

    @app.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
    def sweep(request: Request, sweep_id: str) -> Response:
        view = sweep_page(sweep_id, index.jobs())
        if view is None:
            raise HTTPException(404, f"no job of the roots belongs to sweep {sweep_id!r}")
        return render(request, "sweep.html", view=view)

    actions.add_routes(app, render, guard, found)

    @app.get("/static-vega.js")
    def vega() -> Response:
        from brevpipe.reports.report import javascript_bundle

        return Response(javascript_bundle(), media_type="text/javascript",
                        headers={"Cache-Control": "max-age=86400"})

    return app

