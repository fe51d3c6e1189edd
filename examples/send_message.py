"""Send one instant message and follow it until it is displayed.

    python examples/send_message.py --to sip:bob@127.0.0.1:5070 --text "Hello Bob"

The message asks for delivery and display notifications; the script prints
each step (accepted, delivered, displayed) and exits 0 once the message is
displayed, 1 if that does not happen within ``--wait`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from sipimdn import ListenEndpoint, SipError, UserAgent, UserAgentConfig


async def main(args: argparse.Namespace) -> int:
    config = UserAgentConfig(
        # Notifications come back to our AOR; port 0 there means "the port we listen on".
        aor="sip:alice@127.0.0.1:0",
        display_name="Alice",
        listen=(ListenEndpoint.parse("udp:127.0.0.1:0"),),
    )
    async with UserAgent(config) as ua:
        handle = await ua.send_message(args.to, args.text, notify={"positive-delivery", "display"})
        print(f"sent {handle.message_id}", flush=True)
        try:
            response = await asyncio.wait_for(handle.final_response(), args.wait)
        except (SipError, TimeoutError) as exc:  # TransactionTimeout, TransportError...
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
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--to", default="sip:bob@127.0.0.1:5070", help="recipient (default %(default)s)")
    parser.add_argument("--text", default="Hello Bob", help="message text")
    parser.add_argument("--wait", type=float, default=10.0, help="seconds to wait for each step")
    sys.exit(asyncio.run(main(parser.parse_args())))
