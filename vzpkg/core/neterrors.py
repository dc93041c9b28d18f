"""A short human reason for a failed HTTP request (requests, urllib3 or urllib).

Imported where a download failed or by code that already uses urllib3: the
exception chains these libraries raise are walked for the cause a user can act on.
"""

from __future__ import annotations

import http.client
import socket

import urllib3


def _chain(exc: BaseException) -> list[BaseException]:
    """*exc* and every exception it wraps (cause, context, .reason, exception args)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop()
        if any(e is x for x in seen):
            continue
        seen.append(e)
        more = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        todo.extend(x for x in more if isinstance(x, BaseException))
    return seen


def describe(exc: BaseException) -> str:
    """e.g. "connection refused", "host name not found", "read timed out"."""
    chain = _chain(exc)
    for kind, text in ((ConnectionRefusedError, "connection refused"),
                       (socket.gaierror, "host name not found"),
                       (urllib3.exceptions.ReadTimeoutError, "read timed out"),
                       (urllib3.exceptions.ConnectTimeoutError, "connect timed out"),
                       (TimeoutError, "timed out"),
                       (http.client.IncompleteRead, "connection closed early by the server"),
                       (ConnectionResetError, "connection reset by the server"),
                       (urllib3.exceptions.SSLError, "TLS error")):
        if any(isinstance(e, kind) for e in chain):
            return text
    return str(chain[-1] if len(chain) > 1 else exc)[:200]
