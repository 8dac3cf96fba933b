"""Tests for notifyhub_client against a real daemon.

Run by `cargo test -p notifyhub --test python_client`, which starts the
daemon and sets NOTIFYHUB_SOCKET; by hand: start `notifyhub serve` with the
noop plugin and run `python3 -m unittest test_notifyhub_client`.
"""

import os
import threading
import unittest

from notifyhub_client import Client, NotifyhubError


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.path = os.environ["NOTIFYHUB_SOCKET"]

    def test_submit_and_wait_on_a_task(self):
        with Client(self.path, timeout=30) as nh:
            [task_id] = nh.submit(platform="noop", target="t", body="hello")
            task = nh.wait(task_id)
            self.assertEqual(task["state"], "succeeded")
            self.assertEqual(task["history"][0]["number"], 1)
            [done] = nh.submit(platform="noop", target="t", body="b", wait=True)
            self.assertEqual(done["state"], "succeeded")

    def test_errors_carry_the_daemon_s_code(self):
        with Client(self.path, timeout=30) as nh:
            with self.assertRaises(NotifyhubError) as caught:
                nh.submit(platform="nosuch", target="t", body="b")
            self.assertEqual(caught.exception.code, "unknown_platform")
            with self.assertRaises(NotifyhubError) as caught:
                nh.task("not-a-uuid")
            self.assertEqual(caught.exception.code, "invalid_request")

    def test_watch_sees_a_task_succeed(self):
        seen = []
        ready = threading.Event()

        def watcher():
            with Client(self.path, timeout=30) as nh:
                events = nh.watch(platform="noop", state="succeeded")
                ready.set()
                for event in events:
                    seen.append(event["task_id"])
                    return

        thread = threading.Thread(target=watcher)
        thread.start()
        ready.wait(30)
        with Client(self.path, timeout=30) as nh:
            # The generator sends the watch only when first advanced: wait
            # for the daemon to count the watcher before submitting.
            for _ in range(3000):
                if nh.call("status")["watchers"] >= 1:
                    break
                threading.Event().wait(0.01)
            [task_id] = nh.submit(platform="noop", target="t", body="watched")
        thread.join(30)
        self.assertEqual(seen, [task_id])


if __name__ == "__main__":
    unittest.main()
