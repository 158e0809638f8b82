"""``brevpipe serve``: real HTTP on 127.0.0.1 (uvicorn in a thread, httpx). Results equal
``brevpipe predict`` on the same files; tokens, limits and bad images are refused clearly."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jwt
import pytest

from brevpipe.commands import predict, serve
from brevpipe.errors import ConfigError
from brevpipe.serving.app import create_app
from brevpipe.serving.auth import DEFAULT_SECRET_ENV, make_token
from tests.conftest import free_port
from tests.test_predict import JPEG_HEAD, TinyJob, tiny_job

pytestmark = pytest.mark.xdist_group("tiny-job")  # test_predict.py's job, trained once
SECRET = "test-secret-0123456789abcdef0123456789abcdef"
MAX_BATCH = 8
MAX_BYTES = 256 * 1024


# -- no model needed -----------------------------------------------------------------------
def test_tokens_and_secrets(tmp_path: Path, monkeypatch, capsys) -> None:
    token = make_token(SECRET, expires_in=60, subject="ci")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "ci" and 55 <= claims["exp"] - time.time() <= 60
    with pytest.raises(ConfigError, match="at least 32"):
        make_token("short")

    monkeypatch.delenv("BREVPIPE_JWT_SECRET", raising=False)
    assert serve.main(["--make-token"]) == 1
    assert "no JWT secret: set BREVPIPE_JWT_SECRET" in capsys.readouterr().err
    (tmp_path / "secret").write_text(SECRET + "\n")
    assert serve.main(["--make-token", "--secret-file", str(tmp_path / "secret"),
                       "--expires-in", "30"]) == 0  # fmt: skip
    jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])
    monkeypatch.setenv("MY_SECRET", SECRET)
    assert serve.main(["--make-token", "--secret-env", "MY_SECRET"]) == 0
    jwt.decode(capsys.readouterr().out.strip(), SECRET, algorithms=["HS256"])


# -- a served model ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> TinyJob:
    return tiny_job(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def url(job: TinyJob) -> Iterator[str]:
    """The service on a free 127.0.0.1 port, uvicorn in a background thread."""
    import uvicorn

    from brevpipe.serving.resolve import resolve_model

    app = create_app(resolve_model(job.archive), SECRET, max_batch=MAX_BATCH,
                     max_bytes=MAX_BYTES)  # fmt: skip
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def expected(job: TinyJob, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """``brevpipe predict`` on the job's images: file name -> record."""
    out = tmp_path_factory.mktemp("expected") / "predictions.json"
    assert predict.main([job.archive, *job.images, "--output", str(out)]) == 0
    return {Path(r["path"]).name: r for r in json.loads(out.read_text())}


@pytest.fixture(scope="module")
def headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(SECRET, 600)}"}


def files_of(paths: list[str]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (Path(p).name, Path(p).read_bytes(), "application/octet-stream"))
            for p in paths]  # fmt: skip


def assert_matches(predictions: list[dict], expected: dict[str, dict], names: list[str]) -> None:
    assert [p["name"] for p in predictions] == names
    for prediction in predictions:
        want = expected[prediction["name"]]
        assert prediction["predicted"] == want["predicted"]
        assert set(prediction["scores"]) == {k.removeprefix("score_") for k in want
                                             if k.startswith("score_")}  # fmt: skip
        for cls, score in prediction["scores"].items():
            assert abs(score - want[f"score_{cls}"]) <= 1e-6, (prediction["name"], cls)


@pytest.mark.slow
def test_health_docs_and_model(url, headers, job) -> None:
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    for path in ("/docs", "/openapi.json"):  # behind the token (no --public-docs)
        assert httpx.get(f"{url}{path}").status_code == 401
    assert httpx.get(f"{url}/redoc").status_code == 404
    assert "swagger" in httpx.get(f"{url}/docs", headers=headers).text.lower()
    spec = httpx.get(f"{url}/openapi.json", headers=headers).json()
    assert {"/predict", "/tasks", "/tasks/{task_id}", "/model", "/health"} <= set(spec["paths"])
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    model = httpx.get(f"{url}/model", headers=headers).json()
    assert model["classes"] == ["circle", "square", "triangle"]
    assert model["job_id"] == job.job_id
    assert model["source"] == {"model": job.archive}  # what is served (a registered version:
    # its name, version and alias too, tests/test_model_registry.py)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # the HS512 forgery
def test_refused_without_a_valid_token(url) -> None:
    now = int(time.time())
    expired = jwt.encode({"exp": now - 10}, SECRET, algorithm="HS256")
    wrong = jwt.encode({"exp": now + 600}, "another-secret-0123456789abcdef-0123456789",
                       algorithm="HS256")  # fmt: skip
    no_exp = jwt.encode({"sub": "x"}, SECRET, algorithm="HS256")
    hs512 = jwt.encode({"exp": now + 600}, SECRET, algorithm="HS512")  # not the service's alg
    unsigned = jwt.encode({"exp": now + 600}, None, algorithm="none")  # alg: none
    header, payload, signature = make_token(SECRET, 600).split(".")
    forged = base64.urlsafe_b64encode(json.dumps({"exp": now + 10**6}).encode()).rstrip(b"=")
    tampered = f"{header}.{forged.decode()}.{signature}"  # payload changed, signature kept
    not_yet = jwt.encode({"exp": now + 600, "nbf": now + 300}, SECRET, algorithm="HS256")
    cases = {
        hs512: "invalid bearer token",
        unsigned: "invalid bearer token",
        tampered: "signature does not match",
        not_yet: "invalid bearer token",
        None: "missing bearer token",
        expired: "bearer token expired",
        wrong: "signature does not match",
        no_exp: "no 'exp' claim",
        "not-a-jwt": "invalid bearer token",
    }
    for token, detail in cases.items():
        auth = {"Authorization": f"Bearer {token}"} if token else {}
        for method, path in (("GET", "/model"), ("POST", "/predict"), ("POST", "/tasks"),
                             ("GET", "/tasks/abc"), ("GET", "/docs"),
                             ("GET", "/openapi.json")):  # fmt: skip
            response = httpx.request(method, f"{url}{path}", headers=auth)
            assert response.status_code == 401, (token, path)
            assert detail in response.json()["detail"]
            assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.slow
def test_multipart_and_base64_equal_brevpipe_predict(url, headers, job, expected) -> None:
    paths = list(job.images[:MAX_BATCH])
    names = [Path(p).name for p in paths]
    assert {Path(p).suffix for p in paths} == {".png", ".jpg"}
    response = httpx.post(f"{url}/predict", headers=headers, files=files_of(paths))
    assert response.status_code == 200, response.text
    assert_matches(response.json()["predictions"], expected, names)

    images = [{"name": Path(p).name, "data": base64.b64encode(Path(p).read_bytes()).decode()}
              for p in paths]  # fmt: skip
    response = httpx.post(f"{url}/predict", headers=headers, json={"images": images})
    assert response.status_code == 200, response.text
    assert_matches(response.json()["predictions"], expected, names)


@pytest.mark.slow
def test_async_task_succeeds_with_the_same_result(url, headers, job, expected) -> None:
    paths = list(job.images[-3:])
    response = httpx.post(f"{url}/tasks", headers=headers, files=files_of(paths))
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    deadline = time.monotonic() + 30
    while (state := httpx.get(f"{url}/tasks/{task_id}", headers=headers).json())["state"] in (
        "PENDING", "STARTED"
    ):  # fmt: skip
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert state["state"] == "SUCCESS" and state["task_id"] == task_id and "error" not in state
    assert_matches(state["result"]["predictions"], expected, [Path(p).name for p in paths])

    bad = httpx.post(f"{url}/tasks", headers=headers,
                     files=[("files", ("broken.jpg", JPEG_HEAD, "image/jpeg"))])  # fmt: skip
    # an image whose header cannot be read is refused at once, before any task or decoder
    assert bad.status_code == 422 and "image 'broken.jpg' cannot be decoded" in bad.text

    missing = httpx.get(f"{url}/tasks/nope", headers=headers)
    assert missing.status_code == 404 and "no task 'nope'" in missing.json()["detail"]


@pytest.mark.slow
def test_limits(url, headers, job) -> None:
    big = [("files", ("big.png", b"\0" * (MAX_BYTES + 1), "image/png"))]
    response = httpx.post(f"{url}/predict", headers=headers, files=big)
    assert response.status_code == 413 and "--max-bytes" in response.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(MAX_BYTES // 4096 + 2):
            yield b"x" * 4096

    response = httpx.post(f"{url}/predict", content=chunks(),
                          headers={**headers, "Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 413 and f"limit of {MAX_BYTES} bytes" in response.text

    many = files_of([job.images[0]] * (MAX_BATCH + 1))
    response = httpx.post(f"{url}/predict", headers=headers, files=many)
    assert response.status_code == 413
    assert f"{MAX_BATCH + 1} images in one request; at most {MAX_BATCH}" in response.text

    for body, detail in (({"images": []}, "no images"),
                         ({"pictures": []}, "JSON body must be"),
                         ({"images": [{"name": "a", "data": "%%"}]}, "'data' is not valid base64"),
                         ({"images": [{"name": "a"}]}, "needs a base64 string")):  # fmt: skip
        response = httpx.post(f"{url}/predict", headers=headers, json=body)
        assert response.status_code == 422 and detail in response.json()["detail"]
    response = httpx.post(f"{url}/predict", content=b"x",
                          headers={**headers, "Content-Type": "text/plain"})  # fmt: skip
    assert response.status_code == 415 and "send multipart/form-data" in response.text


@pytest.mark.slow
def test_corrupt_image_is_named_and_the_service_goes_on(url, headers, job, expected) -> None:
    files = files_of([job.images[0]]) + [("files", ("broken.jpg", JPEG_HEAD + b"\0" * 64,
                                                     "image/jpeg"))]  # fmt: skip
    response = httpx.post(f"{url}/predict", headers=headers, files=files)
    assert response.status_code == 422
    assert "image 'broken.jpg' cannot be decoded" in response.json()["detail"]
    response = httpx.post(f"{url}/predict", headers=headers, files=files_of([job.images[0]]))
    assert response.status_code == 200
    assert_matches(response.json()["predictions"], expected, [Path(job.images[0]).name])


@pytest.mark.slow
def test_fifty_concurrent_requests(url, headers, job, expected) -> None:
    def call(i: int) -> tuple[list[str], httpx.Response]:
        paths = [job.images[(i + k) % len(job.images)] for k in range(1 + i % 3)]
        with httpx.Client(timeout=60) as client:
            return paths, client.post(f"{url}/predict", headers=headers, files=files_of(paths))

    start = threading.Barrier(50, timeout=60)

    def together(i: int) -> tuple[list[str], httpx.Response]:
        start.wait()  # all 50 requests in flight at once
        return call(i)

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(together, range(50)))
    assert [r.status_code for _, r in results] == [200] * 50
    for paths, response in results:
        assert_matches(response.json()["predictions"], expected, [Path(p).name for p in paths])


@pytest.mark.slow
def test_decompression_bomb_is_refused_before_decoding(url, headers, job, expected) -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (6000, 5000)).save(buffer, format="PNG")  # 30 Mpx in a few kB
    assert len(buffer.getvalue()) < MAX_BYTES
    files = [("files", ("bomb.png", buffer.getvalue(), "image/png"))]
    response = httpx.post(f"{url}/predict", headers=headers, files=files)
    assert response.status_code == 422
    assert "image 'bomb.png' is 6000x5000 pixels, over the limit" in response.json()["detail"]
    response = httpx.post(f"{url}/predict", headers=headers, files=files_of([job.images[0]]))
    assert response.status_code == 200


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_too_many_waiting_tasks_get_503(job) -> None:
    from fastapi.testclient import TestClient

    from brevpipe.serving.predictor import load_predictor

    app = create_app(load_predictor(job.archive), SECRET, task_threads=1, max_pending=1)
    service = app.state.service
    auth = {"Authorization": f"Bearer {make_token(SECRET, 600)}"}
    with TestClient(app) as client:
        with service._model_lock:  # the first task waits for the model
            first = client.post("/tasks", headers=auth, files=files_of([job.images[0]]))
            assert first.status_code == 202
            second = client.post("/tasks", headers=auth, files=files_of([job.images[0]]))
            assert second.status_code == 503 and second.headers["retry-after"] == "1"
            assert "--max-pending" in second.json()["detail"]
        deadline = time.monotonic() + 30
        task_id = first.json()["task_id"]
        while client.get(f"/tasks/{task_id}", headers=auth).json()["state"] != "SUCCESS":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        again = client.post("/tasks", headers=auth, files=files_of([job.images[0]]))
        assert again.status_code == 202  # room again once the first one is done


def png_bytes(side: int) -> bytes:
    """A real side x side RGB PNG."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- hostile bodies: every one gets a 4xx, never a 5xx ------------------------------------------
def png_header(width: int, height: int) -> bytes:
    """A small PNG whose header announces ``width`` x ``height`` grey pixels (a decompression
    bomb's shape: its first rows of zeros, compressed, would inflate to the rest)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))  # fmt: skip

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows)
            + chunk(b"IEND", b""))  # fmt: skip


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def images_body(*images: dict) -> str:
    """A JSON request body; json.dumps writes a lone surrogate as the escape \\ud800."""
    return json.dumps({"images": list(images)})


def rss_peak_after(action) -> tuple[int, int]:
    """(resident set size before, peak during ``action``) of this process, in bytes: the peak
    is reset first (Linux clear_refs), so it is the action's own."""
    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(field)

    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    action()
    return before, status("VmHWM")


@pytest.mark.slow
def test_hostile_bodies_get_4xx_and_the_service_goes_on(url, headers, job, expected) -> None:
    one = base64.b64encode(Path(job.images[0]).read_bytes()).decode()
    json_headers = {**headers, "Content-Type": "application/json"}
    bodies = {
        "open brackets": "[" * 100_000,
        "deep images": '{"images": ' + "[" * 50_000 + "]" * 50_000 + "}",
        "deep object": '{"images": [' + '{"a":' * 20_000 + "1" + "}" * 20_000 + "]}",
        "lone surrogate name": images_body({"name": "\ud800", "data": one}),
        "name not a string": images_body({"name": {"x": 1}, "data": one}),
        "long name": images_body({"name": "n" * 5000, "data": one}),
        "images not objects": '{"images": [1, "x", null]}',
        "not utf-8": b'{"images": [{"name": "\xff\xfe", "data": ""}]}',
        "random bytes as image": images_body({"data": b64(bytes(range(256)) * 8)}),
        "bomb header 15000x12000": images_body({"data": b64(png_header(15000, 12000))}),
        "bomb header 60000x60000": images_body({"data": b64(png_header(60000, 60000))}),
    }
    for endpoint in ("/predict", "/tasks"):
        for name, body in bodies.items():
            response = httpx.post(f"{url}{endpoint}", headers=json_headers, content=body)
            assert 400 <= response.status_code < 500, (endpoint, name, response.text[:300])
            assert response.json()["detail"], (endpoint, name)
    bomb_file = [("files", ("b.png", png_header(15000, 12000), "image/png"))]
    bomb = httpx.post(f"{url}/predict", headers=headers, files=bomb_file)
    assert bomb.status_code == 422 and "over the limit" in bomb.json()["detail"]
    raw = httpx.post(f"{url}/predict", headers=headers,
                     files=[("files", ("r.bin", bytes(range(256)), "image/png"))])  # fmt: skip
    assert raw.status_code == 422 and "cannot be decoded" in raw.json()["detail"]
    try:  # uvicorn (h11) drops a connection whose headers exceed its limit: no 5xx either way
        huge = httpx.get(f"{url}/model", headers={**headers, "X-Big": "x" * 200_000})
        assert huge.status_code < 500
    except (httpx.ReadError, httpx.RemoteProtocolError):
        pass

    def bombs() -> None:
        for side in (15000, 20000, 40000, 65535):
            files = [("files", (f"{side}.png", png_header(side, side), "image/png"))]
            assert httpx.post(f"{url}/predict", headers=headers, files=files).status_code == 422

    before, peak = rss_peak_after(bombs)
    assert peak - before < 100 * 2**20, f"peak RSS grew by {(peak - before) / 2**20:.0f} MB"
    print(f"decompression-bomb requests: RSS {before / 2**20:.0f} MB, peak "
          f"{peak / 2**20:.0f} MB (+{(peak - before) / 2**20:.1f} MB)")
    response = httpx.post(f"{url}/predict", headers=headers, files=files_of(job.images[:2]))
    assert_matches(response.json()["predictions"], expected, [Path(p).name for p in job.images[:2]])


@contextlib.contextmanager
def serving(job: TinyJob, tmp_path: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """``brevpipe serve ARCHIVE ARGS`` as users start it, in its own process, once it answers
    on 127.0.0.1: (URL, its log file)."""
    import subprocess
    import sys

    port, log = free_port(), tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "brevpipe"), "serve", job.archive,
             "--port", str(port), *args],
            env={**os.environ, DEFAULT_SECRET_ENV: SECRET}, stdout=out, stderr=out,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "brevpipe serve did not start:\n" + log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", log
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def served(job: TinyJob, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``brevpipe serve`` with the tests' batch and body limits."""
    with serving(job, tmp_path, "--max-batch", str(MAX_BATCH), "--max-bytes",
                 str(MAX_BYTES)) as running:  # fmt: skip
        yield running


def test_serve_listens_on_this_machine_only_and_applies_max_pixels(
    job: TinyJob, headers: dict[str, str], tmp_path: Path
) -> None:
    """The default --host is 127.0.0.1 (another loopback address gets no answer), and
    --max-pixels set on the command line refuses a larger image before decoding it."""
    with serving(job, tmp_path, "--max-pixels", "1000") as (url, log):
        port = url.rsplit(":", 1)[1]
        assert f"Uvicorn running on http://127.0.0.1:{port}" in log.read_text()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.2:{port}/health")
        small = [("files", ("small.png", png_bytes(20), "image/png"))]
        large = [("files", ("large.png", png_bytes(40), "image/png"))]
        assert httpx.post(f"{url}/predict", headers=headers, files=small).status_code == 200
        refused = httpx.post(f"{url}/predict", headers=headers, files=large)
        assert refused.status_code == 422
        assert "1600 pixels" in refused.json()["detail"] or "40x40" in refused.json()["detail"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_schemathesis_fuzzing_finds_no_5xx(served, headers, job, expected, tmp_path: Path) -> None:
    """schemathesis against the OpenAPI of a running ``brevpipe serve``, seeded and bounded:
    no 5xx, no request left unanswered, no traceback in the server's log; then a valid
    prediction still equals brevpipe predict, and 50 concurrent requests all answer 200."""
    import shutil
    import subprocess
    import sys
    from collections import Counter

    url, log = served
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    har = tmp_path / "fuzz.har"
    # a hang is a request unanswered after 120 s; a busy CI machine can take seconds for one
    result = subprocess.run(
        [cli, "run", f"{url}/openapi.json", "-H", f"Authorization: {headers['Authorization']}",
         "--checks", "not_a_server_error,response_schema_conformance,status_code_conformance",
         "--max-examples", "40", "--seed", "20261125", "--request-timeout", "120",
         "--report", "har", "--report-har-path", str(har), "--continue-on-failure"],
        capture_output=True, text=True, timeout=800, cwd=tmp_path,  # its caches stay there
    )  # fmt: skip
    entries = json.loads(har.read_text())["log"]["entries"]
    statuses = Counter(e["response"]["status"] for e in entries)
    slowest = max(entries, key=lambda e: e["time"])
    print(f"schemathesis: {len(entries)} requests, statuses {dict(sorted(statuses.items()))}, "
          f"slowest {slowest['time'] / 1000:.2f} s ({slowest['request']['method']} "
          f"{slowest['request']['url']})")  # fmt: skip
    server_log = log.read_text()
    assert len(entries) >= 50, result.stdout[-3000:]
    assert not [s for s in statuses if s >= 500], result.stdout[-5000:]
    assert result.returncode == 0, result.stdout[-5000:] + "\nserver log:\n" + server_log[-5000:]
    assert "Traceback" not in server_log, server_log[-5000:]
    response = httpx.post(f"{url}/predict", headers=headers, files=files_of([job.images[0]]))
    assert_matches(response.json()["predictions"], expected, [Path(job.images[0]).name])
    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(lambda i: httpx.post(
            f"{url}/predict", headers=headers, files=files_of([job.images[i % 4]]),
            timeout=120).status_code, range(50)))  # fmt: skip
    assert codes == [200] * 50
