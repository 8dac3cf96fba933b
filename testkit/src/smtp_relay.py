"""A real SMTP relay on 127.0.0.1 for notifyhub's tests (aiosmtpd).

Usage: smtp_relay.py DIR --tls starttls|implicit|none [--user U --password P]

Writes DIR/ca.pem (a test CA from trustme, which signed the relay's
certificate for "localhost" and 127.0.0.1), prints "PORT <n>" once it
listens, and appends every accepted message to DIR/messages.jsonl as
{"mail_from", "rcpt_tos", "data", "login", "tls", "peer"} (peer: the
client's port, which tells connections apart).

The first recipient's local part picks how the relay answers, so one relay
serves every case of a test:
  unknown@...  550 5.1.1 at RCPT TO
  defer@...    451 4.3.0 after DATA, every time
  closing@...  421 4.3.2 after DATA, every time
  busy@...     452 4.5.3 too many messages (a rate limit)
  flaky@...    451 after DATA the first time a Message-ID is seen, then 250
  drop@...     the connection is dropped after DATA, before any reply
  slow@...     the reply to DATA comes after 30 s
anything else is accepted with "250 2.0.0 Ok: queued as <n>".
"""

import argparse
import asyncio
import json
import os
import re
import ssl
import sys

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Handler:
    def __init__(self, out, implicit):
        self.out = out
        self.implicit = implicit
        self.seen = set()
        self.queued = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if not envelope.rcpt_tos and address.startswith("unknown@"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        first = envelope.rcpt_tos[0].split("@")[0]
        data = envelope.content.decode("utf-8", "replace")
        match = re.search(r"^Message-ID:\s*(\S+)", data, re.M | re.I)
        message_id = match.group(1) if match else None
        if first == "defer":
            return "451 4.3.0 Temporary failure, try again later"
        if first == "closing":
            return "421 4.3.2 Service shutting down"
        if first == "busy":
            return "452 4.5.3 Too many messages, slow down"
        if first == "flaky" and message_id not in self.seen:
            self.seen.add(message_id)
            return "451 4.3.0 Greylisted, try again"
        if first == "drop":
            server.transport.abort()
            return "250 never sent"
        if first == "slow":
            await asyncio.sleep(30)
        self.queued += 1
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": data,
            "login": session.auth_data.decode() if isinstance(session.auth_data, bytes) else None,
            "tls": self.implicit or session.ssl is not None,
            "peer": session.peer[1],
        }
        with open(self.out, "a") as f:
            f.write(json.dumps(record) + "\n")
        return "250 2.0.0 Ok: queued as Q%d" % self.queued


def authenticator(user, password):
    def check(server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = auth_data.login == user.encode() and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False, auth_data=auth_data.login if ok else None)
    return check


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--tls", choices=["starttls", "implicit", "none"], required=True)
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()

    ca = trustme.CA()
    ca.cert_pem.write_to_path(os.path.join(args.dir, "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)

    handler = Handler(os.path.join(args.dir, "messages.jsonl"), args.tls == "implicit")
    options = {}
    if args.user:
        options.update(
            authenticator=authenticator(args.user, args.password),
            auth_required=True,
            auth_require_tls=args.tls == "starttls",
        )

    def factory():
        if args.tls == "starttls":
            return SMTP(handler, tls_context=context, require_starttls=True, **options)
        return SMTP(handler, **options)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory, "127.0.0.1", 0, ssl=context if args.tls == "implicit" else None
    )
    print("PORT %d" % server.sockets[0].getsockname()[1], flush=True)
    # Ends when the test closes our stdin (or kills us).
    await loop.run_in_executor(None, sys.stdin.read)


asyncio.run(main())
