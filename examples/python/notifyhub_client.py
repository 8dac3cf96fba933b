"""A client for notifyhub's socket protocol, standard library only.

    from notifyhub_client import Client

    with Client("/run/notifyhub/notifyhub.sock") as nh:
        [task_id] = nh.submit(platform="slack", target=url, body="deploy done")
        task = nh.wait(task_id)            # blocks until succeeded or dead
        for event in nh.watch(state="dead"):
            print(event["task_id"], event["outcome"])

Requests are JSON lines with an ``id``; answers may come out of order, so
every call matches its answer by id. Errors from the daemon are raised as
``NotifyhubError`` with its ``code`` (``busy`` and ``unavailable`` mean: try
again later). See docs/protocol.md for every operation and field.
"""

import collections
import itertools
import json
import os
import socket

__all__ = ["Client", "NotifyhubError"]


class NotifyhubError(Exception):
    """The daemon answered with an error."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def default_socket():
    """The socket `notifyhub serve` uses by default, or $NOTIFYHUB_SOCKET."""
    if os.environ.get("NOTIFYHUB_SOCKET"):
        return os.environ["NOTIFYHUB_SOCKET"]
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return os.path.join(data, "notifyhub", "notifyhub.sock")


class Client:
    """One connection to the daemon. Not safe to share between threads."""

    def __init__(self, path=None, timeout=None):
        self._path = path or default_socket()
        self._timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(self._path)
        self._file = self._sock.makefile("rb")
        self._ids = itertools.count(1)
        # Lines that arrived for another request than the one being read.
        self._early = collections.defaultdict(collections.deque)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._file.close()
        self._sock.close()

    def _send(self, request):
        request_id = next(self._ids)
        line = json.dumps({**request, "id": request_id}) + "\n"
        self._sock.sendall(line.encode())
        return request_id

    def _answer(self, request_id):
        if self._early[request_id]:
            return self._early[request_id].popleft()
        while True:
            line = self._file.readline()
            if not line:
                raise NotifyhubError("closed", "the daemon closed the connection")
            answer = json.loads(line)
            if answer.get("id") == request_id or answer.get("id") is None:
                return answer
            self._early[answer.get("id")].append(answer)

    @staticmethod
    def _result(answer):
        if answer.get("ok"):
            return answer.get("result")
        error = answer.get("error") or {}
        raise NotifyhubError(error.get("code", "unknown"), error.get("message", ""))

    def call(self, op, **fields):
        """Any operation: returns its `result`, raises NotifyhubError."""
        return self._result(self._answer(self._send({"op": op, **fields})))

    def submit(self, target, body, platform=None, title=None, fmt="text", wait=False, **extra):
        """Submits one task; returns its ids (one per fan-out leaf), or with
        ``wait=True`` the finished tasks."""
        task = {"target": target, "body": body, "format": fmt, **extra}
        if platform is not None:
            task["platform"] = platform
        if title is not None:
            task["title"] = title
        result = self.call("submit", task=task, wait=wait)
        return result["tasks"] if wait else result["task_ids"]

    def task(self, task_id):
        """One task with its attempts."""
        return self.call("task", task_id=task_id)

    def wait(self, task_id):
        """Blocks until the task has succeeded or is dead; returns it. Watches
        on a connection of its own, subscribed before it looks, so the end
        cannot slip between the look and the watch."""
        finished = ("succeeded", "dead")
        with Client(self._path, self._timeout) as watcher:
            request_id = watcher._send({"op": "watch"})
            watcher._result(watcher._answer(request_id))
            task = self.task(task_id)
            while task["state"] not in finished:
                result = watcher._result(watcher._answer(request_id))
                event = result.get("event") or {}
                ended = event.get("task_id") == task_id and event.get("state") in finished
                if ended or "dropped" in result:
                    task = self.task(task_id)
            return task

    def watch(self, platform=None, destination=None, state=None):
        """Yields task events as they happen (see the `watch` op). A
        ``{"dropped": n}`` item means this reader fell behind by n events."""
        filters = {k: v for k, v in
                   (("platform", platform), ("destination", destination), ("state", state))
                   if v is not None}
        request_id = self._send({"op": "watch", **filters})
        self._result(self._answer(request_id))
        while True:
            result = self._result(self._answer(request_id))
            if "event" in result:
                yield result["event"]
            else:
                yield {"dropped": result.get("dropped", 0)}
