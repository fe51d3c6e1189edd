"""Register with a registrar, send one message with IMDN through its proxy, print the notifications.

    SIPIMDN_PASSWORD=alice-secret python examples/behind_proxy.py \\
        --aor sip:alice@example.test --proxy "sip:127.0.0.1:5060;lr" --to sip:bob@example.test

The user agent registers its contact (answering the registrar's 401 with the
digest credentials), then sends the MESSAGE through the outbound proxy
(answering its 407 once; later requests go authenticated up front). Delivery
and display notifications come back through the proxy to the registered
contact. Each step is printed; the script exits 0 once the message is
displayed, 1 on a refusal, a failed registration (wrong password: exactly one
retry, then "authentication failed") or no notification within ``--wait``.

The password is read from ``--password-file`` or the ``SIPIMDN_PASSWORD``
environment variable, never from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from sipimdn import ListenEndpoint, SipError, UserAgent, UserAgentConfig
from sipimdn.auth import Credentials
from sipimdn.events import DispositionEvent, RegistrationEvent, RegistrationSucceeded


def read_password(args: argparse.Namespace) -> str | None:
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n")
    return os.environ.get("SIPIMDN_PASSWORD")


async def main(args: argparse.Namespace) -> int:
    password = read_password(args)
    if password is None:
        print("no password: use --password-file or SIPIMDN_PASSWORD", file=sys.stderr)
        return 2
    username = args.username or args.aor.split(":", 1)[1].split("@", 1)[0]
    config = UserAgentConfig(
        aor=args.aor,
        listen=(ListenEndpoint.parse(args.listen),),
        outbound_proxy=args.proxy,
        register=True,
        registrar=args.registrar,  # None: the AOR's domain, reached through the proxy
        register_expires=args.expires,
        # realm=None: these credentials answer any realm's challenge.
        credentials=(Credentials(username, password),),
    )
    async with UserAgent(config) as ua:

        @ua.on_registration
        async def show_registration(event: RegistrationEvent) -> None:
            print(f"registration: {type(event).__name__} {event}", flush=True)

        @ua.on_disposition
        async def show_notification(event: DispositionEvent) -> None:
            print(f"notification: {type(event).__name__} {event}", flush=True)

        try:
            registered = await ua.wait_registered(timeout=args.wait)
        except TimeoutError:
            print("not registered in time", flush=True)
            return 1
        if not isinstance(registered, RegistrationSucceeded):
            print(f"registration failed: {registered}", flush=True)
            return 1
        print(f"registered as {ua.aor} for {registered.expires} s", flush=True)

        handle = await ua.send_message(args.to, args.text, notify={"positive-delivery", "display"})
        print(f"sent {handle.message_id} to {args.to}", flush=True)
        try:
            response = await asyncio.wait_for(handle.final_response(), args.wait)
        except (SipError, TimeoutError) as exc:  # AuthenticationFailed, TransactionTimeout...
            print(f"not sent: {exc or 'no answer in time'}", flush=True)
            return 1
        print(f"answer: {response.status_code} {response.reason}", flush=True)
        if response.status_code >= 300:
            return 1
        for step in ("delivered", "displayed"):
            try:
                state = await handle.await_disposition(step, timeout=args.wait)
            except TimeoutError:
                print(f"no {step} notification within {args.wait} s", flush=True)
                return 1
            if not handle.reached(step):
                print(f"{step}: no (state: {state})", flush=True)
                return 1
            # Both IMDNs may arrive together: the state can already be past this step.
            print(f"{step}: yes (state: {state})", flush=True)
    # Leaving the block unregistered us (the Unregistered line above).
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--aor", default="sip:alice@127.0.0.1", help="our address of record (%(default)s)")
    parser.add_argument("--proxy", default="sip:127.0.0.1:5060;lr", help="outbound proxy (%(default)s)")
    parser.add_argument("--registrar", default=None, help="registrar URI (default: the AOR's domain)")
    parser.add_argument("--listen", default="udp:127.0.0.1:0", help="where to listen (%(default)s)")
    parser.add_argument("--to", default="sip:bob@127.0.0.1", help="recipient (%(default)s)")
    parser.add_argument("--text", default="Hello Bob, via the proxy", help="message text")
    parser.add_argument("--username", default=None, help="digest user name (default: the AOR's user)")
    parser.add_argument("--password-file", default=None, help="file holding the password (first line)")
    parser.add_argument("--expires", type=int, default=600, help="registration lifetime asked for")
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for each step")
    sys.exit(asyncio.run(main(parser.parse_args())))
