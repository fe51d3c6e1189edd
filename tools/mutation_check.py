"""Plant known bugs one at a time in a scratch copy of the tree and check the tests catch each.

    python tools/mutation_check.py                  # every mutation
    python tools/mutation_check.py --list           # names and what each plants
    python tools/mutation_check.py udp-limit-1500 408-on-give-up   # some of them
    python tools/mutation_check.py --keep           # leave the scratch copy for inspection

Run by hand, not in CI (it runs pytest once per mutation, plus a baseline: a few minutes). The
repository is copied (without .git, .venv and caches) to a temporary directory; each mutation is
a list of text patches, each an exact, small, distinctive piece of code (the *anchor*) and what
replaces it. For each mutation the script

1. checks every anchor occurs exactly once in its file, else reports ``anchor not found`` (or
   ``anchor ambiguous``): the code moved on, and the mutation must be rewritten, never counted
   as caught;
2. runs the mutation's tests on the unmutated copy (``baseline failing`` if they do not pass:
   a failure then would prove nothing);
3. applies the patches, runs the same tests, and restores the files. The tests failing is
   ``caught``; passing is ``survived``, a bug the suite would let through.

The tests run with the interpreter running this script, the copy as working directory and first
on PYTHONPATH, so ``import sipimdn`` loads the mutated copy (checked before anything runs), not
an editable install, in pytest and in the processes tests start (crash_peer.py, the CLI).
Tests that need a peer program (SIPp) skip without it unless CI=true is set; the script sets
CI=true so such a skip fails the run (tests/conftest.py) instead of passing it.
The exit status is 0 only if every selected mutation was caught.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache",
                                 ".pytest_cache", "*.egg-info", "build", "dist")


@dataclass(frozen=True)
class Patch:
    """Replace ``anchor`` (must occur exactly once in ``path``) with ``replacement``."""

    path: str
    anchor: str
    replacement: str


@dataclass(frozen=True)
class Mutation:
    name: str
    #: The bug, in words.
    bug: str
    patches: tuple[Patch, ...]
    #: pytest arguments (paths, -k) selecting the tests expected to catch it.
    tests: tuple[str, ...]


RECEIVE = "sipimdn/ua/_receive.py"
SEND = "sipimdn/ua/_send.py"
SENDER = "sipimdn/imdn/tracker/sender.py"
RECEIVER = "sipimdn/imdn/tracker/receiver.py"
SHARED = "sipimdn/ua/_shared.py"

MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "inflight-resend-handed-up",
        "a resend (same imdn.Message-ID, new transaction) arriving while the first copy's "
        "handler runs is handed to the application again",
        (Patch(RECEIVE, "if reception.duplicate:",
               "if reception.duplicate and (message_id, sender) not in self._deciding:"),),
        ("tests/test_ua_inflight_duplicate.py",),
    ),
    Mutation(
        "inflight-resend-answered-at-once",
        "that resend is answered the deadline status at once instead of the first copy's answer",
        (Patch(RECEIVE, "deciding.followers.append(incoming)",
               "incoming.respond(self.config.deadline_status)"),),
        ("tests/test_ua_inflight_duplicate.py",),
    ),
    Mutation(
        "ignore-duplicate-flag",
        "a resend with a Message-ID already seen is handed up again",
        (Patch(RECEIVE, "if reception.duplicate:", "if False:"),),
        ("tests/test_ua_loopback.py", "-k", "duplicate"),
    ),
    Mutation(
        "udp-limit-1500",
        "the stack switches to TCP only above 1500 bytes (RFC 3261 §18.1.1 says 1300)",
        (Patch("sipimdn/transport/select.py", "DEFAULT_UDP_MAX = 1300", "DEFAULT_UDP_MAX = 1500"),),
        ("tests/test_stack.py", "-k", "udp_limit or large_request"),
    ),
    Mutation(
        "udp-limit-inclusive",
        "a request of exactly 1300 bytes already goes over TCP",
        (Patch("sipimdn/transport/select.py", "size > udp_max", "size >= udp_max"),),
        ("tests/test_stack.py", "-k", "udp_limit"),
    ),
    Mutation(
        "udp-size-before-via",
        "the size rule measures the request before our Via is stamped",
        (Patch("sipimdn/stack.py",
               "        stamp_via(request, transport, self.transports.sent_by(transport, chosen.host), "
               "rport=self.rport)\n        data = request.to_bytes()\n        size = len(data)\n",
               "        size = len(request.to_bytes())\n"
               "        stamp_via(request, transport, self.transports.sent_by(transport, chosen.host), "
               "rport=self.rport)\n        data = request.to_bytes()\n"),),
        ("tests/test_stack.py", "tests/interop/test_sipp_stack.py", "-k", "udp_limit or switches"),
    ),
    Mutation(
        "never-switch-to-tcp",
        "a request over 1300 bytes is sent over UDP anyway",
        (Patch("sipimdn/transport/select.py", "return transport is Transport.UDP and size > udp_max",
               "return False"),),
        ("tests/test_stack.py", "-k", "udp_limit or large_request"),
    ),
    Mutation(
        "imdn-matched-to-wrong-message",
        "a notification is applied to the first message awaited, whatever its Message-ID",
        (Patch(SENDER,
               "record = self._sent.get(message_id)\n        if record is None:\n"
               "            return reject(RejectReason.UNKNOWN_MESSAGE",
               "record = next(iter(self._sent.values()), None)\n        if record is None:\n"
               "            return reject(RejectReason.UNKNOWN_MESSAGE"),),
        ("tests/test_tracker_sender.py", "tests/robustness/test_forgery.py"),
    ),
    Mutation(
        "display-privacy-ignored",
        "display policy 'silent' is ignored: a requested display notification is sent",
        (Patch(RECEIVER,
               "        if \"display\" in kinds and policy is DisplayPolicy.SILENT:",
               "        if False:"),
         Patch(RECEIVER,
               "        if record.display_policy != DisplayPolicy.SEND:\n            return None\n",
               "")),
        ("tests/robustness/test_forgery.py", "-k", "c7"),
    ),
    Mutation(
        "imdn-for-an-imdn",
        "an IMDN that asks for notifications is taken for an IM (and owed an IMDN: a loop)",
        (Patch("sipimdn/ua/_wire.py", "    if inner in _IMDN_TYPES:\n",
               "    if inner in _IMDN_TYPES and not imdn.requested:\n"),),
        ("tests/robustness/test_forgery.py", "-k", "c4"),
    ),
    Mutation(
        "415-retry-resends-cpim",
        "after a 415 to message/cpim the retry is message/cpim again",
        (Patch(SEND, "use_cpim=False, previous=request", "use_cpim=True, previous=request"),),
        ("tests/test_ua_loopback.py", "-k", "415"),
    ),
    Mutation(
        "2xx-before-store-write",
        "a received message owed a notification is answered 2xx before that debt is on disk",
        (Patch(RECEIVE, "time.time(), sent=False):", "time.time(), sent=True) and False:"),),
        ("tests/robustness/test_crash_recovery.py",),
    ),
    Mutation(
        "message-before-durable",
        "a MESSAGE leaves before its sent record is on disk",
        (Patch(SEND, "            await self._writer.written()\n        except Exception:\n",
               "            pass\n        except Exception:\n"),),
        ("tests/robustness/test_crash_recovery.py",),
    ),
    Mutation(
        "408-on-give-up",
        "an unanswered server transaction sends 408 when it gives up (RFC 4320 §4.2 forbids it)",
        (Patch("sipimdn/dialog/transaction.py",
               "    (_S.PROCEEDING, _I.TIMER_GIVE_UP): (_V._nothing, _S.TERMINATED),",
               "    (_S.PROCEEDING, _I.TIMER_GIVE_UP): (_V._give_up_408, _S.TERMINATED),"),
         Patch("sipimdn/dialog/transaction.py",
               "    def _discard_final(self, now: float) -> None:",
               "    def _give_up_408(self, now: float) -> None:\n"
               "        assert self.last_response is not None\n"
               "        self.last_response.status_code, self.last_response.reason = 408, 'Timeout'\n"
               "        self._actions.append(Send(self.last_response))\n\n"
               "    def _discard_final(self, now: float) -> None:")),
        ("tests/test_stack.py", "-k", "gives_up"),
    ),
    Mutation(
        "no-513-on-oversize-tcp",
        "a message over the limits on TCP closes the connection without the stateless 513",
        (Patch("sipimdn/transport/stream.py", "self._on_bad_message(framer.failed_data, exc, self.flow)",
               "pass"),),
        ("tests/test_stack.py", "tests/robustness/test_limits_tcp.py", "-k",
         "endless_header or slowloris"),
    ),
    Mutation(
        "xml-size-cap-lifted",
        "IMDN documents are parsed by libxml2 up to 64 MB instead of 64 KB",
        (Patch("sipimdn/_safexml.py", "MAX_DOCUMENT_SIZE = 64 * 1024\n",
               "MAX_DOCUMENT_SIZE = 64 * 1024 * 1024\n"),),
        ("tests/robustness/test_xml_attacks.py", "-k", "ten_megabyte"),
    ),
    Mutation(
        "ci-skips-pass",
        "a test skipped under CI=true leaves the run green",
        (Patch("tests/conftest.py", "session.exitstatus = pytest.ExitCode.TESTS_FAILED", "pass"),),
        ("tests/test_ci_no_skips.py",),
    ),
    Mutation(
        "cross-worker-copy-handed-up",
        "a copy (same Message-ID, new Call-ID) reaching another worker sharing the store is handed "
        "to the application again",
        (Patch(SHARED, "if kept is not None and not tracker.is_duplicate(message_id, sender):",
               "if False:"),),
        ("tests/test_ua_workers.py", "-k", "copy_sent_to_another_worker"),
    ),
    Mutation(
        "foreign-imdn-not-forwarded",
        "an IMDN about a message another worker sent is rejected where it lands instead of "
        "reaching the sender's worker",
        (Patch(SHARED, "return self._shared is not None and self._require_tracker().sent(message_id) is None",
               "return False"),),
        ("tests/test_ua_workers.py", "-k", "reaching_another_worker"),
    ),
    Mutation(
        "no-take-over",
        "a survivor never takes over what a stopped worker owed and awaited",
        (Patch(SHARED, "taken = await asyncio.to_thread(store.take_over, now)", "taken = Snapshot()"),),
        ("tests/test_ua_workers.py", "-k", "survivor"),
    ),
    Mutation(
        "2xx-with-unstored-obligations",
        "with a shared store, a 2xx goes out although its records did not reach the store",
        (Patch(RECEIVE, "if self._writer.failures > failures and self._refuse_unstored(pending):",
               "if False:"),),
        ("tests/test_ua_workers.py", "-k", "cannot_be_stored"),
    ),
)


def scratch_env(scratch: Path) -> dict[str, str]:
    """The environment of the tests: the copy first on PYTHONPATH, so the processes the tests
    start themselves (crash_peer.py, the CLI) import the mutated copy too; CI=true."""
    path = os.pathsep.join(p for p in (str(scratch), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, CI="true", PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=path)


def run_tests(scratch: Path, tests: tuple[str, ...], timeout: float) -> tuple[bool, str]:
    """Run pytest on ``tests`` in ``scratch``; (passed, last lines of output)."""
    env = scratch_env(scratch)
    command = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    tail = [line for line in done.stdout.splitlines() if line.strip()][-1:]
    return done.returncode == 0, " ".join(tail)


def check_import(scratch: Path) -> None:
    """Make sure the tests and their child processes (started from any directory) will import
    the copy, not an installed (editable) sipimdn."""
    done = subprocess.run([sys.executable, "-c", "import sipimdn; print(sipimdn.__file__)"],
                          cwd=tempfile.gettempdir(), env=scratch_env(scratch), capture_output=True,
                          text=True, check=True)
    loaded = Path(done.stdout.strip()).resolve()
    if scratch.resolve() not in loaded.parents:
        raise SystemExit(f"the scratch copy imports {loaded}, not its own sipimdn: cannot mutate")


def check(mutation: Mutation, scratch: Path, timeout: float) -> tuple[str, str]:
    """(verdict, detail) for one mutation; the copy is left unmutated afterwards."""
    originals: dict[Path, str] = {}
    for patch in mutation.patches:
        path = scratch / patch.path
        text = originals.setdefault(path, path.read_text()) if path.exists() else ""
        count = text.count(patch.anchor)
        if count != 1:
            verdict = "anchor not found" if count == 0 else "anchor ambiguous"
            return verdict, f"{patch.path}: {patch.anchor.splitlines()[0].strip()!r} x{count}"
    passed, detail = run_tests(scratch, mutation.tests, timeout)
    if not passed:
        return "baseline failing", detail
    mutated = dict(originals)
    for patch in mutation.patches:
        mutated[scratch / patch.path] = mutated[scratch / patch.path].replace(patch.anchor, patch.replacement)
    try:
        for path, text in mutated.items():
            path.write_text(text)
        passed, detail = run_tests(scratch, mutation.tests, timeout)
    finally:
        for path, text in originals.items():
            path.write_text(text)
    return ("survived" if passed else "caught"), detail


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per pytest run")
    args = parser.parse_args()
    if args.list:
        for mutation in MUTATIONS:
            print(f"{mutation.name:34} {mutation.bug}\n{'':34} tests: {' '.join(mutation.tests)}")
        return 0
    known = {m.name: m for m in MUTATIONS}
    unknown = [name for name in args.names if name not in known]
    if unknown:
        parser.error(f"unknown mutation(s): {', '.join(unknown)}")
    selected = [known[name] for name in args.names] if args.names else list(MUTATIONS)
    scratch = Path(tempfile.mkdtemp(prefix="sipimdn-mutation-")) / "tree"
    shutil.copytree(ROOT, scratch, ignore=IGNORED)
    try:
        check_import(scratch)
        results = []
        for mutation in selected:
            started = time.monotonic()
            verdict, detail = check(mutation, scratch, args.timeout)
            results.append(verdict)
            seconds = time.monotonic() - started
            print(f"{verdict:17} {mutation.name:34} {seconds:5.0f} s  {detail}", flush=True)
        caught = results.count("caught")
        missed = ", ".join(f"{results.count(v)} {v}" for v in sorted(set(results)) if v != "caught")
        print(f"\n{caught}/{len(results)} caught; {missed or 'none missed'}")
        return 0 if caught == len(results) else 1
    finally:
        if args.keep:
            print(f"scratch copy kept in {scratch}")
        else:
            shutil.rmtree(scratch.parent, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
