"""HTTP helpers every app's views share."""
from __future__ import annotations

import re
from pathlib import Path

from django.http import FileResponse, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.shortcuts import render


def bad_form_response(form) -> HttpResponseBadRequest:
    """400 with every error of an invalid form in one line ("field: message; ..."), for POST endpoints whose caller
    is a button or a script rather than a page that re-renders the form."""
    return HttpResponseBadRequest("; ".join(
        f"{field}: {' '.join(errors)}" if field != "__all__" else " ".join(errors)
        for field, errors in form.errors.items()))


def retry_later_json(message: str, retry_after: int, status: int = 429) -> JsonResponse:
    """A refused request to a JSON endpoint: 429 (this client asked too often) or 503 (the server is full), with
    `Retry-After` and `{"error": message, "retry_after": seconds}`."""
    response = JsonResponse({"error": message, "retry_after": retry_after}, status=status)
    response["Retry-After"] = str(retry_after)
    return response


def retry_later_page(request, message: str, retry_after: int, status: int = 429, *, link=None) -> HttpResponse:
    """The same for a page (templates/retry_later.html); `link` is an optional (url, text) to offer instead."""
    response = render(request, "retry_later.html", {"message": message, "retry_after": retry_after,
                                                    "link": link, "status": status}, status=status)
    response["Retry-After"] = str(retry_after)
    return response


RANGE = re.compile(r"^bytes=(\d{0,1000})-(\d{0,1000})$")  # longer: not a range (int() refuses > 4300 digits)
UNSATISFIABLE = (-1, -1)


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive (start, end) a Range header asks of `size` bytes (RFC 9110, one range); None for no or an
    unparsable header (the whole body), UNSATISFIABLE when it lies outside."""
    match = RANGE.match(header.strip()) if header else None
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # a suffix: the last N bytes
        length = min(int(last), size)
        start, end = size - length, size - 1
    else:
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
    return UNSATISFIABLE if start >= size or start > end else (start, end)


def _unsatisfiable(size: int) -> HttpResponse:
    response = HttpResponse(status=416)
    response["Content-Range"] = f"bytes */{size}"
    return response


def _partial(body: bytes, start: int, end: int, size: int, content_type: str) -> HttpResponse:
    response = HttpResponse(body, status=206, content_type=content_type)
    response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Content-Length"] = str(len(body))
    return response


def ranged_file_response(request, path: Path, content_type: str):
    """The file with byte ranges: browsers fetch parts of a video to seek in it, and FileResponse alone sends the
    whole file every time."""
    size = path.stat().st_size
    wanted = byte_range(request.headers.get("Range", ""), size)
    if wanted is None:
        response = FileResponse(open(path, "rb"), content_type=content_type)
    elif wanted == UNSATISFIABLE:
        return _unsatisfiable(size)
    else:
        start, end = wanted
        with open(path, "rb") as fh:
            fh.seek(start)
            response = _partial(fh.read(end - start + 1), start, end, size, content_type)
    response["Accept-Ranges"] = "bytes"
    return response


def ranged_response(request, data: bytes, content_type: str, etag: str | None = None) -> HttpResponse:
    """`data` with byte ranges and, given `etag`, conditional requests: If-None-Match answers 304, and a Range
    sent with an If-Range that no longer matches gets the whole body (the client's partial copy is stale)."""
    quoted = f'"{etag}"' if etag else None
    if quoted and request.headers.get("If-None-Match", "") == quoted:
        response = HttpResponse(status=304)
        response["ETag"] = quoted
        return response
    if_range = request.headers.get("If-Range")
    fresh = if_range is None or if_range == quoted
    wanted = byte_range(request.headers.get("Range", ""), len(data)) if fresh else None
    if wanted == UNSATISFIABLE:
        return _unsatisfiable(len(data))
    if wanted is None:
        response = HttpResponse(data, content_type=content_type)
    else:
        start, end = wanted
        response = _partial(data[start:end + 1], start, end, len(data), content_type)
    response["Accept-Ranges"] = "bytes"
    if quoted:
        response["ETag"] = quoted
    return response
