"""The API's one error type: a status, a stable code and a sentence for people (gateway/api.py renders it)."""
from __future__ import annotations


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}
