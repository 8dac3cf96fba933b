"""Helpers for notifyhub plugins written in Python (componentize-py).

The generated bindings (`wit_world`) are low-level: records and variants
as the contract spells them. This module gives a plugin what it needs in a
few calls:

- `request(method, url, headers, body)` -> `Response`: a blocking HTTP
  request. A body of up to 512 KiB goes to the host with the request, and
  the answer comes back, in one call (`notifyhub:http/client`); a larger
  one is streamed through `wasi:http`. Either way the host enforces the
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
from wit_world.imports import client, host, outgoing_handler, streams
from wit_world.imports import notifyhub_plugin_types as t
from wit_world.imports import wasi_http_types as h

MAX_RESPONSE_BYTES = 1 << 20
# The largest body `notifyhub:http/client` takes in one call.
ONE_CALL_MAX_BODY = 512 * 1024
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
    if len(body) > ONE_CALL_MAX_BODY:
        return _streamed(method, url, headers, body)
    one = client.Request(_METHODS[method], url, [(k.lower(), v.encode()) for k, v in headers], body)
    try:
        answer = client.send(one)
    except Err as e:
        if isinstance(e.value, client.HttpError_Invalid):
            invalid(f"the request to {_redacted(url)} cannot be sent: {e.value.value}")
        _transport(e.value.value, url)
    response_headers = {k: v.decode("utf-8", "replace") for k, v in answer.headers}
    return Response(answer.status, response_headers, bytes(answer.body[:MAX_RESPONSE_BYTES]))


def _streamed(method: str, url: str, headers: List[Tuple[str, str]], body: bytes) -> Response:
    """`request` through `wasi:http`, the body written 4 KiB at a time."""
    scheme, rest = (h.Scheme_Https(), url[8:]) if url.startswith("https://") else (h.Scheme_Http(), url[7:])
    cut = min([i for i in (rest.find("/"), rest.find("?")) if i >= 0] or [len(rest)])
    authority, path = rest[:cut], rest[cut:] or "/"
    if path.startswith("?"):
        path = "/" + path
    # A known length spares servers a chunked body.
    headers = list(headers) + [("content-length", str(len(body)))]
    outgoing = h.OutgoingRequest(h.Fields.from_list([(k.lower(), v.encode()) for k, v in headers]))
    outgoing.set_method(_METHODS[method])
    outgoing.set_scheme(scheme)
    outgoing.set_authority(authority)
    outgoing.set_path_with_query(path)
    outgoing_body = outgoing.body()
    try:
        future = outgoing_handler.handle(outgoing, None)
    except Err as e:
        _transport(e.value, url)
    try:
        stream = outgoing_body.write()
        for start in range(0, len(body), 4096):
            stream.blocking_write_and_flush(body[start:start + 4096])
        stream.__exit__(None, None, None)
        h.OutgoingBody.finish(outgoing_body, None)
    except Err:
        # A denied or failed request closes the body; the response carries
        # the real reason.
        pass
    future.subscribe().block()
    result = future.get()
    if result is None or isinstance(result.value, Err):
        retryable("the HTTP response was lost")
    inner = result.value
    if isinstance(inner, Err):
        _transport(inner.value, url)
    incoming = inner.value
    status = incoming.status()
    response_headers = {k.lower(): v.decode("utf-8", "replace") for k, v in incoming.headers().entries()}
    incoming_body = incoming.consume()
    data = bytearray()
    input_stream = incoming_body.stream()
    while len(data) < MAX_RESPONSE_BYTES:
        try:
            data += input_stream.blocking_read(65536)
        except Err as e:
            if isinstance(e.value, streams.StreamError_Closed):
                break
            retryable(f"reading the response from {_redacted(url)} failed")
    input_stream.__exit__(None, None, None)
    return Response(status, response_headers, bytes(data[:MAX_RESPONSE_BYTES]))


def _transport(code, url: str):
    where = _redacted(url)
    if isinstance(code, h.ErrorCode_HttpRequestDenied):
        permanent(f"the host denied the request to {where}: add it to the plugin's allowed_hosts")
    retryable(f"request to {where} failed: {type(code).__name__.removeprefix('ErrorCode_')}")
