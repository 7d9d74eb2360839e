"""Credentials never leave the process: the one place that hides them in URIs the project logs, prints or
records (tracking URIs, S3 endpoints, run storage paths, and any text that quotes them, such as an error).

- ``redact(text)``: every ``scheme://user:password@host`` in ``text`` becomes ``scheme://***@host``, and the
  value of every query parameter whose name mentions a secret (``password``, ``secret``, ``token``, ``key``,
  ``signature``, ``credential``, ``auth``) becomes ``***``. Text without credentials is returned unchanged.
- ``split_credentials(uri)``: (the URI without its user info, user, password), for clients that take
  credentials separately (MLflow reads ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``, so the URL it
  prints and quotes in its own errors carries none).
"""
from __future__ import annotations

import re
import urllib.parse
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s?#]+)@")
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;][^=&\s#]*(?:pass|secret|token|key|signature|credential|auth)[^=&\s#]*=)(?P<value>[^&\s#]*)",
    re.IGNORECASE)


def redact(text: Any) -> Any:
    """``text`` with the credentials of every URI in it masked; non-strings are returned as they are."""
    if not isinstance(text, str):
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m['name']}{MASK}" if m["value"] else m[0], text)


def redact_values(values: dict[str, Any]) -> dict[str, Any]:
    """A {key: value} dict (a flattened config) with every string value redacted."""
    return {key: redact(value) for key, value in values.items()}


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(uri without user info, user or None, password or None); user and password percent-decoded."""
    parts = urllib.parse.urlsplit(uri)
    if not parts.scheme or "@" not in parts.netloc:
        return uri, None, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, sep, password = userinfo.partition(":")
    plain = urllib.parse.urlunsplit(parts._replace(netloc=host))
    return plain, urllib.parse.unquote(user) or None, urllib.parse.unquote(password) if sep else None
