"""Receive instant messages and answer their notification requests.

    python examples/receive_messages.py                       # sip:bob@127.0.0.1:5070 over UDP
    python examples/receive_messages.py --listen udp:127.0.0.1:0 --count 1

Each message is printed, answered 200 (which makes the user agent send the
"delivered" notification on its own), then marked displayed, which sends
the "displayed" notification if the sender asked for one. Stops after
``--count`` messages, or on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from sipimdn import IncomingMessage, ListenEndpoint, UserAgent, UserAgentConfig


async def main(args: argparse.Namespace) -> None:
    endpoint = ListenEndpoint.parse(args.listen)
    config = UserAgentConfig(
        # Port 0 in the AOR means "whatever port we get", handy without a registrar.
        aor=f"sip:bob@{endpoint.host}:{endpoint.port}",
        display_name="Bob",
        listen=(endpoint,),
    )
    received = 0
    done = asyncio.Event()

    async with UserAgent(config) as ua:

        @ua.on_message
        async def show(message: IncomingMessage) -> None:
            nonlocal received
            # Returning None answers 200; the user agent then sends "delivered" by itself.
            print(f"from {message.sender}: {message.text}", flush=True)
            # Shown to the user: this sends "displayed" (once the 200 is out) if it was asked for.
            await message.mark_displayed()
            received += 1
            if args.count and received >= args.count:
                done.set()

        print(f"listening as {ua.aor}", flush=True)
        await done.wait()
    # Leaving the `async with` gives notifications in flight a moment to go out.


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--listen", default="udp:127.0.0.1:5070", help="transport:host:port (default %(default)s)"
    )
    parser.add_argument("--count", type=int, default=0, help="stop after this many messages (0: never)")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends it quietly
        asyncio.run(main(parser.parse_args()))
