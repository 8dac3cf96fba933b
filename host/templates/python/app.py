"""{{name}}: POSTs {"title", "text", "task_id"} to the task's target URL.

Replace the body of `send` with your platform's API. `notifyhub_plugin`
raises the four error classes and classifies HTTP statuses; check what your
platform puts in a successful-looking answer (some report errors inside
HTTP 200).
"""

import json

import notifyhub_plugin as nh
from wit_world import exports
from wit_world.imports import notifyhub_plugin_types as t


class Handler(exports.Handler):
    def describe(self) -> t.PluginInfo:
        return t.PluginInfo(
            name="{{name}}",
            version="0.1.0",
            platforms=["{{name}}"],
            config_keys=[],
            rate_limits=[],
            description="{{name}} notifications",
        )

    def send(self, message: t.Message) -> t.Receipt:
        body = {"title": message.title, "text": message.body, "task_id": message.task_id}
        print("posting the message")
        response = nh.request(
            "POST", message.target, [("content-type", "application/json")], json.dumps(body).encode()
        )
        response.classify()
        return t.Receipt(provider_id=None, status=f"HTTP {response.status}")
