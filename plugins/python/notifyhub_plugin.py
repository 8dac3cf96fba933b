"""Helpers for notifyhub plugins written in Python (componentize-py).

The generated bindings (`wit_world`) are low-level: records and variants
as the contract spells them. This module gives a plugin what it needs in a
few calls:

- `request(method, url, headers, body)` -> `Response`: a blocking HTTP
  request, sent and answered in one call to the host
  (`notifyhub:http/client`, bodies up to 512 KiB); the host enforces the
  plugin's allowlist, timeouts and size caps;
- `retryable(...)`, `rate_limited(...)`, `permanent(...)`, `invalid(...)`:
  raise the four delivery error classes;
- `Response.classify()`: the usual meaning of an HTTP status;
- `config(key)`, `log(level, message)`: the host's imports.

`print()` works too: the host logs each line with the plugin and task.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from componentize_py_types import Err
from wit_world.imports import client, host
from wit_world.imports import notifyhub_plugin_types as t
from wit_world.imports import wasi_http_types as h

MAX_RESPONSE_BYTES = 1 << 20
DEFAULT_RETRY_AFTER_MS = 1000


def config(key: str) -> Optional[str]:
    """A setting or secret from the plugin's manifest or destination."""
    return host.get_config(key)


def log(level: str, message: str) -> None:
    """Logs through the host: level is trace, debug, info, warn or error."""
    host.log(host.Level[level.upper()], message)


def retryable(message: str, retry_after_ms: Optional[int] = None):
    raise Err(t.SendError_Retryable(t.Failure(message, retry_after_ms)))


def rate_limited(message: str, retry_after_ms: int = DEFAULT_RETRY_AFTER_MS):
    raise Err(t.SendError_RateLimited(t.RateLimit(message, retry_after_ms)))


def permanent(message: str):
    raise Err(t.SendError_Permanent(message))


def invalid(message: str):
    raise Err(t.SendError_Invalid(message))


@dataclass
class Response:
    status: int
    headers: Dict[str, str]
    body: bytes

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def retry_after_ms(self) -> Optional[int]:
        value = self.headers.get("retry-after")
        try:
            return int(float(value) * 1000) if value is not None else None
        except ValueError:
            return None

    def classify(self) -> None:
        """Raises the usual class for an unsuccessful status: 429 rate
        limited; 408/425/5xx retryable; 401/403/404/410 permanent; other
        4xx invalid."""
        if 200 <= self.status < 300:
            return
        detail = f"HTTP {self.status}: {self.text()[:300].strip()}"
        if self.status == 429:
            rate_limited(detail, self.retry_after_ms() or DEFAULT_RETRY_AFTER_MS)
        if self.status in (408, 425) or self.status >= 500:
            retryable(detail, self.retry_after_ms())
        if self.status in (401, 403, 404, 410):
            permanent(detail)
        invalid(detail)


def _check_url(url: str) -> None:
    """Refuses what is not an absolute http(s) URL, before the host sees it."""
    if not url.startswith(("https://", "http://")):
        invalid("the target must be an http:// or https:// URL")
    if not url.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]:
        invalid("the target URL has no host")


def _redacted(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/')[0].split('?')[0]}"


_METHODS = {"GET": h.Method_Get(), "POST": h.Method_Post(), "PUT": h.Method_Put()}


def request(method: str, url: str, headers: List[Tuple[str, str]], body: bytes = b"") -> Response:
    """Sends a request and reads the whole response (up to 1 MiB)."""
    _check_url(url)
    one = client.Request(_METHODS[method], url, [(k.lower(), v.encode()) for k, v in headers], body)
    try:
        answer = client.send(one)
    except Err as e:
        if isinstance(e.value, client.HttpError_Invalid):
            invalid(f"the request to {_redacted(url)} cannot be sent: {e.value.value}")
        _transport(e.value.value, url)
    response_headers = {k: v.decode("utf-8", "replace") for k, v in answer.headers}
    return Response(answer.status, response_headers, bytes(answer.body[:MAX_RESPONSE_BYTES]))


def _transport(code, url: str):
    where = _redacted(url)
    if isinstance(code, h.ErrorCode_HttpRequestDenied):
        permanent(f"the host denied the request to {where}: add it to the plugin's allowed_hosts")
    retryable(f"request to {where} failed: {type(code).__name__.removeprefix('ErrorCode_')}")
