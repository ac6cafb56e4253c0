"""HTTP helpers every app's views share."""
from __future__ import annotations

import re
from pathlib import Path

from django.http import FileResponse, HttpResponse, HttpResponseBadRequest


def bad_form_response(form) -> HttpResponseBadRequest:
    """400 with every error of an invalid form in one line ("field: message; ..."), for POST endpoints whose caller
    is a button or a script rather than a page that re-renders the form."""
    return HttpResponseBadRequest("; ".join(
        f"{field}: {' '.join(errors)}" if field != "__all__" else " ".join(errors)
        for field, errors in form.errors.items()))


RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def ranged_file_response(request, path: Path, content_type: str):
    """The file with byte ranges (RFC 9110): browsers fetch parts of a video to seek in it, and FileResponse alone
    sends the whole file every time."""
    size = path.stat().st_size
    header = request.headers.get("Range", "")
    match = RANGE.match(header.strip()) if header else None
    if not match:
        response = FileResponse(open(path, "rb"), content_type=content_type)
        response["Accept-Ranges"] = "bytes"
        return response
    first, last = match.groups()
    if first == "":  # a suffix: the last N bytes
        length = min(int(last or 0), size)
        start, end = size - length, size - 1
    else:
        start, end = int(first), min(int(last) if last else size - 1, size - 1)
    if start >= size or start > end:
        response = HttpResponse(status=416)
        response["Content-Range"] = f"bytes */{size}"
        return response
    with open(path, "rb") as fh:
        fh.seek(start)
        body = fh.read(end - start + 1)
    response = HttpResponse(body, status=206, content_type=content_type)
    response["Content-Range"] = f"bytes {start}-{end}/{size}"
    response["Accept-Ranges"] = "bytes"
    response["Content-Length"] = str(len(body))
    return response
