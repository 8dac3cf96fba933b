"""ntfy (https://ntfy.sh and self-hosted servers), written in Python.

The target is the topic URL, `https://ntfy.sh/<topic>`. The message is
posted in ntfy's JSON form to the server's root URL with `topic`,
`message`, `title`, `priority` (low 2, normal 3, high 5) and `markdown`
(markdown renders in the web app). An optional secret `token` is sent as
`Authorization: Bearer`. Messages over 4096 bytes would turn into
attachments, so they are cut with a visible marker.

Answers: 200 with the created message (its `id` is the receipt's provider
id). ntfy's errors are JSON `{"code", "http", "error"}`: 429 (42901, too
many requests) is rate-limited — ntfy sends no Retry-After, so we wait 5 s,
its refill interval; 401/403 are permanent; 413 and other 4xx invalid; 5xx
retryable.
"""

import json

import notifyhub_plugin as nh
from wit_world import exports
from wit_world.imports import notifyhub_plugin_types as t

MAX_BYTES = 4096
MARKER = "… [truncated]"
REFILL_MS = 5000
PRIORITIES = {t.Priority.LOW: 2, t.Priority.NORMAL: 3, t.Priority.HIGH: 5}


def cut(text: str, max_bytes: int) -> str:
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    keep = data[: max_bytes - len(MARKER.encode())].decode("utf-8", "ignore")
    return keep + MARKER


class Handler(exports.Handler):
    def describe(self) -> t.PluginInfo:
        return t.PluginInfo(
            name="ntfy",
            version="0.1.0",
            platforms=["ntfy"],
            config_keys=[t.ConfigKey("token", False, True, "access token (tk_…) for protected topics")],
            rate_limits=[t.RateLimitRule(1, 5000)],
            description="ntfy topics (Python plugin)",
        )

    def send(self, message: t.Message) -> t.Receipt:
        base, _, topic = message.target.rstrip("/").rpartition("/")
        if "://" not in base or not topic:
            nh.invalid("the target must be a topic URL like https://ntfy.sh/mytopic")
        document = {
            "topic": topic,
            "message": cut(message.body, MAX_BYTES),
            "priority": PRIORITIES[message.priority],
        }
        if message.title is not None:
            document["title"] = message.title
        if message.format == t.Format.MARKDOWN:
            document["markdown"] = True
        headers = [("content-type", "application/json")]
        token = nh.config("token")
        if token:
            headers.append(("authorization", f"Bearer {token}"))
        print(f"publishing to topic {topic}")
        response = nh.request("POST", base + "/", headers, json.dumps(document).encode())
        try:
            answer = json.loads(response.body or b"null")
        except ValueError:
            answer = None
        if response.status == 200 and isinstance(answer, dict) and answer.get("id"):
            return t.Receipt(provider_id=answer["id"], status="ok")
        error = answer.get("error", response.text()[:200]) if isinstance(answer, dict) else response.text()[:200]
        code = answer.get("code") if isinstance(answer, dict) else None
        detail = f"HTTP {response.status} (ntfy {code}): {error}"
        if response.status == 429:
            nh.rate_limited(detail, REFILL_MS)
        if response.status in (401, 403):
            nh.permanent(detail)
        if response.status == 413 or 400 <= response.status < 500:
            nh.invalid(detail)
        response.classify()
        nh.retryable(detail)
