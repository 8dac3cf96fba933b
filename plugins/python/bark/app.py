"""Bark (iOS push, https://bark.day.app and self-hosted bark-server), in Python.

The target is the device key from the Bark app. `server` is the Bark
server (default https://api.day.app); `group` groups notifications in
Notification Center (default "notifyhub"). The push goes as JSON to
`{server}/push` with `device_key`, `title`, `body` and `level` from the
priority (low "passive": no sound, no wake; normal "active"; high
"timeSensitive": breaks through Focus). Bark shows plain text, so HTML
loses its tags. An APNs payload is at most 4 KB, so the title is cut to 200
characters and the body to 3,000 bytes, with a visible marker.

Answers: HTTP 200 `{"code": 200, "message": "success"}`. An unknown device
key is HTTP 400 ("failed to get device token"): permanent; other 400s
invalid; 429 rate-limited; 5xx (APNs refused or unreachable) retryable.
"""

import json
import re

import notifyhub_plugin as nh
from wit_world import exports
from wit_world.imports import notifyhub_plugin_types as t

DEFAULT_SERVER = "https://api.day.app"
TITLE_MAX = 200
BODY_MAX_BYTES = 3000
MARKER = "… [truncated]"
LEVELS = {t.Priority.LOW: "passive", t.Priority.NORMAL: "active", t.Priority.HIGH: "timeSensitive"}
TAG = re.compile(r"<[^>]*>")


def cut_bytes(text: str, max_bytes: int) -> str:
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - len(MARKER.encode())].decode("utf-8", "ignore") + MARKER


def cut_chars(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - len(MARKER)] + MARKER


class Handler(exports.Handler):
    def describe(self) -> t.PluginInfo:
        return t.PluginInfo(
            name="bark",
            version="0.1.0",
            platforms=["bark"],
            config_keys=[
                t.ConfigKey("server", False, False, "the Bark server (default https://api.day.app)"),
                t.ConfigKey("group", False, False, "notification group (default notifyhub)"),
            ],
            rate_limits=[],
            description="Bark iOS push (Python plugin)",
        )

    def send(self, message: t.Message) -> t.Receipt:
        key = message.target.strip()
        if not key or not key.isalnum():
            nh.invalid("the target must be a Bark device key")
        body = message.body
        if message.format == t.Format.HTML:
            body = TAG.sub("", body).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        document = {
            "device_key": key,
            "body": cut_bytes(body if body.strip() else "(empty message)", BODY_MAX_BYTES),
            "level": LEVELS[message.priority],
            "group": nh.config("group") or "notifyhub",
        }
        if message.title and message.title.strip():
            document["title"] = cut_chars(message.title.strip(), TITLE_MAX)
        server = (nh.config("server") or DEFAULT_SERVER).rstrip("/")
        response = nh.request(
            "POST", server + "/push", [("content-type", "application/json")], json.dumps(document, ensure_ascii=False).encode()
        )
        try:
            answer = json.loads(response.body or b"null")
        except ValueError:
            answer = None
        said = answer.get("message", "") if isinstance(answer, dict) else response.text()[:200]
        if response.status == 200 and isinstance(answer, dict) and answer.get("code") == 200:
            return t.Receipt(provider_id=None, status="ok")
        detail = f"HTTP {response.status}: {said}"
        if response.status == 400 and "device token" in said:
            nh.permanent(detail)
        if response.status == 429:
            nh.rate_limited(detail, response.retry_after_ms() or nh.DEFAULT_RETRY_AFTER_MS)
        if response.status == 400:
            nh.invalid(detail)
        response.classify()
        nh.retryable(detail)
