"""A stand-in for the platform: records each JSON request and answers 200.

Usage: python3 receiver.py PORT_FILE REQUEST_FILE
Listens on 127.0.0.1 (a free port, written to PORT_FILE) and writes the
last request's JSON body to REQUEST_FILE. Make it answer like your
platform (error codes, bodies) to test how your plugin classifies failures.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Platform(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if not self.headers.get("content-type", "").startswith("application/json"):
            return self.answer(400, {"error": "expected JSON"})
        try:
            document = json.loads(body)
        except ValueError:
            return self.answer(400, {"error": "malformed JSON"})
        with open(sys.argv[2], "w") as out:
            json.dump({"path": self.path, "body": document}, out)
        self.answer(200, {"ok": True, "id": "msg-1"})

    def answer(self, status, document):
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Platform)
# Written aside, then renamed: test.sh reads the file as soon as it exists,
# so it must never see it empty.
with open(sys.argv[1] + ".part", "w") as out:
    out.write(str(server.server_port))
os.rename(sys.argv[1] + ".part", sys.argv[1])
server.serve_forever()
