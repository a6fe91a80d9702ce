"""Uploads: a size limit enforced while the body streams in, and spooling a part to a temp file."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from fastapi import UploadFile
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import BodyTooLarge, TooLarge, too_large_response

UPLOAD_PATHS = frozenset({"/v1/checkpoints", "/v1/datasets"})
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and form fields around the file
JSON_BODY_LIMIT = 1024 * 1024  # every other request body
COPY_CHUNK = 1 << 20
MAX_NAME = 100


def too_large_message(limit: int) -> str:
    return (
        f"the upload is larger than this server's limit of {limit:,} bytes "
        "(DIFFAUDIT_MAX_UPLOAD_BYTES); split the data or ask the operator to raise the limit"
    )


JSON_TOO_LARGE = (
    f"the request body is larger than {JSON_BODY_LIMIT:,} bytes, the limit of every request except the "
    "checkpoint and dataset uploads; send a smaller body"
)


class BodySizeLimit:
    """ASGI middleware: refuse a body over the limit from its Content-Length, or as soon as it exceeds it."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app = app
        self.max_upload_bytes = max_upload_bytes

    def limit_for(self, scope: Scope) -> tuple[int, BodyTooLarge]:
        """(bytes allowed in the body, the error answering a larger one) for this request."""
        if scope["method"] == "POST" and scope["path"].rstrip("/") in UPLOAD_PATHS:
            limit = self.max_upload_bytes
            return limit + MULTIPART_OVERHEAD, BodyTooLarge(too_large_message(limit), limit)
        return JSON_BODY_LIMIT, BodyTooLarge(JSON_TOO_LARGE, JSON_BODY_LIMIT)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed, too_large = self.limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > allowed:
            await too_large_response(too_large)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > allowed:
                    raise too_large
            return message

        await self.app(scope, counting_receive, send)


def safe_file_name(name: str | None) -> str:
    """The client's file name reduced to harmless characters (error messages name it)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath((name or "").replace("\\", "/")).name)[:MAX_NAME]
    return cleaned if cleaned.strip("._") else "upload"


def spool_upload(upload: UploadFile, folder: Path, max_bytes: int) -> Path:
    """Copy an uploaded file into `folder` under its (sanitised) name; the file itself must fit the limit.

    (The middleware bounds the whole body with some slack for the multipart framing; this bounds the file.)
    """
    target = folder / safe_file_name(upload.filename)
    written = 0
    with target.open("wb") as out:
        while chunk := upload.file.read(COPY_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise TooLarge(too_large_message(max_bytes), details={"limit_bytes": max_bytes})
            out.write(chunk)
    return target
