"""What the dashboard starts and computes beside reading records: launched ``brevpipe run``
processes, the Try page's model services, and sample images (only those a job's predictions
table lists, decoded under a pixel limit)."""

from __future__ import annotations

import base64
import io
import logging
import subprocess
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import RedirectResponse, Response
from PIL import Image

from brevpipe.errors import BrevpipeError
from brevpipe.io import storage
from brevpipe.jobs.layout import JobBucket
from brevpipe.serving.service import ModelService
from brevpipe.ui import confusion, launch
from brevpipe.ui.index import JobIndex, Listed

log = logging.getLogger("brevpipe.ui")
MAX_PIXELS = 25_000_000  # as brevpipe serve: a header announcing more is refused unread
THUMB, FULL = 160, 1600
MAX_UPLOAD = 10 * 2**20
KEPT_SERVICES = 2  # loaded models kept for the Try page
KEPT_TABLES, PATHS_TTL_S = 32, 10.0  # jobs whose image paths are kept; when to read again
MAX_IMAGE_BYTES = 64 * 2**20


class Actions:
    """Launches, model services and images, shared by the requests of one dashboard."""

    def __init__(self, index: JobIndex, state_dir: Path) -> None:
        self.index = index
        self.state_dir = state_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.services: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._paths: dict[str, tuple[set[str], float]] = {}  # predictions.csv's paths, by job

    def launch_state(self, job_id: str) -> dict[str, Any] | None:
        """A job this dashboard started whose record is not there yet: still starting, or
        its process's exit code and the end of its console output."""
        process = self.processes.get(job_id)
        if process is None:
            return None
        code = process.poll()  # also reaps an ended process
        log_file = self.state_dir / "launches" / f"{job_id}.log"
        tail = log_file.read_bytes()[-4000:].decode(errors="replace") if code is not None \
            and log_file.exists() else ""  # fmt: skip
        return {"code": code, "log": tail}

    def image(self, listed: Listed, path: str, full: bool) -> bytes:
        """A sample image of the job as PNG (a thumbnail, or at most FULL pixels a side)."""
        known, read_at = self._paths.get(listed.id, (set(), float("-inf")))
        if path not in known and time.monotonic() - read_at > PATHS_TTL_S:
            table = confusion.predictions(listed.record.bucket)
            known = set(table["path"]) if table is not None else set()
            self._paths[listed.id] = (known, time.monotonic())
            while len(self._paths) > KEPT_TABLES:
                self._paths.pop(next(iter(self._paths)))
        if path not in known or storage.protocol_of(path) in ("http", "https"):
            raise HTTPException(404, "not an image of this job's predictions")
        try:
            fs, inner = storage.get_fs(path)
            if not fs.isfile(inner) or (fs.size(inner) or 0) > MAX_IMAGE_BYTES:
                raise HTTPException(404, "not an image file, or over the size limit")
            return thumbnail(storage.read_bytes(path), FULL if full else THUMB)
        except (OSError, ValueError, Image.DecompressionBombError, BrevpipeError) as exc:
            raise HTTPException(404, f"cannot read {path}: {type(exc).__name__}") from None

    def service(self, listed: Listed) -> Any:
        """The model service of a job's exported model (loaded once, a few kept)."""
        from brevpipe.serving.predictor import load_predictor

        with self._lock:
            if listed.id in self.services:
                self.services.move_to_end(listed.id)
                return self.services[listed.id]
            service = ModelService(load_predictor(JobBucket(listed.record.bucket).model_archive))
            self.services[listed.id] = service
            while len(self.services) > KEPT_SERVICES:
                self.services.popitem(last=False)[1].close()
            return service

    def add_routes(self, app: FastAPI, render: Any, guard: Any, found: Any) -> None:
        """The launch and Try pages."""
        roots = self.index.roots

        @app.get("/launch")
        def launch_form(request: Request) -> Response:
            params = dict(request.query_params)
            choices = {k.removeprefix("choice:"): v for k, v in params.items()
                       if k.startswith("choice:")}  # fmt: skip
            values = None
            if source := params.get("from"):
                record = found(source).record
                output_choices = (record.output or {}).get("choices")
                choices = {**(output_choices if isinstance(output_choices, dict) else {}),
                           **choices}  # fmt: skip
                values = record.config
            return render(request, "launch.html", sections=launch.build_form(choices, values),
                          roots=roots, source=source or "", message="")

        @app.post("/launch")
        async def launch_job(request: Request) -> Response:
            form = {k: str(v) for k, v in (await request.form()).items()}
            guard.check_write(request, form.get("token"))
            root = form.get("root") or roots[0]
            if root not in roots:
                raise HTTPException(400, "launch into one of the dashboard's roots")
            try:
                overrides, _ = launch.overrides_of(form)
            except launch.FormError as exc:  # the form again, the errors at their fields
                return render(request, "launch.html", sections=exc.sections, roots=roots,
                              source=form.get("from", ""), message=str(exc))
            job_id, process = launch.start(overrides, root, self.state_dir / "launches")
            self.processes[job_id] = process
            log.info("launched job %s: brevpipe run %s", job_id, " ".join(overrides))
            return RedirectResponse(f"/jobs/{job_id}", status_code=303)

        @app.get("/try")
        def try_form(request: Request, job: str = "") -> Response:
            models = [item for item in self.index.jobs() if item.record.status == "completed"
                      and (item.record.output or {}).get("model")]  # fmt: skip
            return render(request, "try.html", models=models, chosen=job, results=None)

        @app.post("/try")
        def try_images(request: Request, files: Annotated[list[UploadFile], File()],
                       job: Annotated[str, Form()] = "",
                       token: Annotated[str, Form()] = "") -> Response:  # fmt: skip
            guard.check_write(request, token)
            listed = found(job)
            images = []
            for upload in files[:16]:
                data = upload.file.read(MAX_UPLOAD + 1)
                if len(data) > MAX_UPLOAD:
                    raise HTTPException(413, f"{upload.filename}: over {MAX_UPLOAD} bytes")
                images.append((upload.filename or "image", data))
            try:
                results = self.service(listed).predict(images)
            except BrevpipeError as exc:
                return render(request, "try.html", models=[listed], chosen=listed.id,
                              results=None, message=str(exc))
            for result, (_, data) in zip(results, images, strict=True):
                result["thumbnail"] = "data:image/png;base64," + base64.b64encode(
                    thumbnail(data, THUMB)).decode()
            return render(request, "try.html", models=[listed], chosen=listed.id,
                          results=results, message="")


def thumbnail(data: bytes, side: int) -> bytes:
    """``data`` decoded (refusing more than MAX_PIXELS) and shrunk to ``side`` pixels, as PNG."""
    with Image.open(io.BytesIO(data)) as image:
        if image.width * image.height > MAX_PIXELS:
            raise OSError("too many pixels")
        image.thumbnail((side, side))
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG", compress_level=1)
    return out.getvalue()
