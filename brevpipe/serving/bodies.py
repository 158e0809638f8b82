"""Request bodies of ``POST /predict`` and ``POST /tasks``: multipart ``files`` or JSON
``{"images": [{"name", "data": <base64>}]}``, read within the size and count limits.

A body over ``max_bytes`` gets 413, as do more images than ``max_batch``; a malformed body 422;
another content type 415; a client gone mid-body 400.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest

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
    body = await _read_body(request, max_bytes)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        images = await _multipart_images(request, body, max_bytes)
    elif kind == "application/json":
        images = _json_images(body)
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


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The whole body, refused (413) as soon as it is known to be over ``max_bytes``: from its
    Content-Length, else while it streams in."""

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
    return b"".join(chunks)


async def _multipart_images(request: Request, body: bytes, max_bytes: int
                            ) -> list[tuple[str, bytes]]:  # fmt: skip
    """The file parts of the multipart field ``files``."""

    async def replay() -> dict[str, Any]:  # the body is read already: parse it from memory
        return {"type": "http.request", "body": body, "more_body": False}

    form = await StarletteRequest(request.scope, replay).form(
        max_files=max_bytes // 64 + 1, max_fields=1000
    )
    images: list[tuple[str, bytes]] = []
    try:
        for i, item in enumerate(form.getlist("files")):
            if isinstance(item, str):
                raise HTTPException(422, f"field 'files' #{i} is text, not a file: send "
                                         "images as file parts (curl -F files=@image.png).")
            images.append((image_name(item.filename, i), await item.read()))
    finally:
        await form.close()
    return images


def _json_images(body: bytes) -> list[tuple[str, bytes]]:
    """The entries of ``{"images": [{"name": ..., "data": <base64>}]}``."""
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
    images: list[tuple[str, bytes]] = []
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
    return images
