"""A URI-list (group) server: one MESSAGE to the list becomes one per member, IMDNs collected.

    python examples/group_list.py --listen udp:0.0.0.0:5060 --list sip:friends@example.com \\
        --member sip:bob@192.0.2.10:5060 --member sip:carol@example.com --window 2

Senders address the list URI (through this server as outbound proxy). Each
member gets a copy whose CPIM To is the member, with ``Original-To`` set to
the list and this server's IMDN-Record-Route; their delivery/display
notifications come back here and go to the sender aggregated into one
multipart/mixed IMDN per ``--window`` seconds (or relayed one by one with
``--relay``). ``--private`` strips member identities from what the sender
sees; ``--hide-count`` also hides how many there are (one summary IMDN).
Members of ``--domain`` must REGISTER here (store-and-forward applies to
them); other member URIs are sent to directly. Also accepts the
store-and-forward options (``--retry``, ``--expiry``, ``--store``,
``--next-hop``, TLS).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from store_and_forward import build_parser, config_from, serve

from sipimdn.intermediary import ExploderConfig, UriList


def main() -> int:
    """Parse the command line and serve the list."""
    parser = build_parser(__doc__)
    parser.add_argument("--list", required=True, help="the list's URI")
    parser.add_argument("--member", action="append", required=True, help="a member URI (repeatable)")
    parser.add_argument("--private", action="store_true", help="hide member identities from senders")
    parser.add_argument("--members-only", action="store_true", help="refuse messages from non-members")
    parser.add_argument(
        "--hide-count", action="store_true", help="hide even the member count: one summary IMDN per message"
    )
    parser.add_argument("--relay", action="store_true", help="relay each IMDN at once instead of aggregating")
    parser.add_argument("--window", type=float, default=2.0, help="aggregation window in seconds")
    parser.add_argument(
        "--state-ttl", type=float, default=3600.0, help="how long a fan-out is remembered (s)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        config = config_from(
            args,
            lists=(
                UriList(
                    args.list,
                    tuple(args.member),
                    private=args.private,
                    members_only=args.members_only,
                    hide_count=args.hide_count,
                ),
            ),
            exploder=ExploderConfig(aggregate=not args.relay, window=args.window, state_ttl=args.state_ttl),
        )
    except (ValueError, OSError) as exc:
        print(f"bad option: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(config, args.run_for))


if __name__ == "__main__":
    sys.exit(main())
