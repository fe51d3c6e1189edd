"""Short CI fuzzing of every peer-data parser: parses, or raises the module's own error; no hang.

The long runs (>= 1,000,000 inputs per parser, atheris) are ``bench/fuzz/run.py``; this file
runs the same targets (``fuzz_targets.py``) with a small hypothesis budget, on random bytes and
on byte-level mutations of the real messages in ``tests/data``.
"""

from __future__ import annotations

import random
import time

import pytest
from fuzz_targets import SEEDS, TARGETS, FuzzTarget, mutate, run_framer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipimdn.errors import SipError, SipParseError
from sipimdn.parser import StreamFramer

# One input taking longer than this is a hang for CI purposes (typical inputs take < 5 ms).
HANG_SECONDS = 2.0
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))

NAMES = sorted(TARGETS)


def check(target: FuzzTarget, data: bytes) -> bool:
    """Run one input; True if it parsed. Fails on any exception but the module's error, or a hang."""
    began = time.perf_counter()
    try:
        target.run(data)
        parsed = True
    except target.error as exc:
        # The typed error carries a SIP status a UAS could answer with.
        assert 400 <= exc.status_code <= 599, exc
        assert exc.reason
        parsed = False
    elapsed = time.perf_counter() - began
    assert elapsed < HANG_SECONDS, f"{target.name}: {len(data)}-byte input took {elapsed:.2f} s"
    return parsed


def test_every_target_error_is_a_sip_error() -> None:
    assert all(issubclass(t.error, SipError) for t in TARGETS.values())


@pytest.mark.parametrize("name", NAMES)
def test_seeds_are_handled(name: str) -> None:
    """The seed corpus itself: most seeds must parse, or mutation would start from nothing."""
    target = TARGETS[name]
    parsed = sum(check(target, seed) for seed in target.seeds)
    # RFC 4475 holds deliberately invalid messages, so only "some" for sip/framer.
    assert parsed >= 1, f"no {name} seed parses"


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(name: str, data: bytes) -> None:
    check(TARGETS[name], data)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(index=st.integers(min_value=0), seed=st.integers(min_value=0, max_value=2**32))
def test_mutated_seeds(name: str, index: int, seed: int) -> None:
    target = TARGETS[name]
    rng = random.Random(seed)
    data = mutate(target.seeds[index % len(target.seeds)], rng, max_len=target.max_len)
    check(target, data)


def test_mutation_reaches_both_outcomes() -> None:
    """A guard on the harness: mutants must both parse and fail, else the fuzzing proves little."""
    rng = random.Random(7)
    for name in ("sip", "uri", "multipart", "cpim"):
        target = TARGETS[name]
        outcomes = {check(target, mutate(rng.choice(target.seeds), rng)) for _ in range(300)}
        assert outcomes == {True, False}, name


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_uri_any_text(text: str) -> None:
    check(TARGETS["uri"], text.encode("utf-8"))


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from('Digest realm=",nonce qop=auth\\ \t\r\nabc'), max_size=120))
def test_digest_challenge_grammar_soup(text: str) -> None:
    check(TARGETS["digest"], text.encode("utf-8"))


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(index=st.integers(min_value=0), seed=st.integers(min_value=0, max_value=2**32),
       cuts=st.lists(st.integers(min_value=0, max_value=4096), max_size=12))
def test_framer_any_chunking_matches_whole(index: int, seed: int, cuts: list[int]) -> None:
    """Beyond byte by byte (inside the target): random chunk boundaries give the same outcome."""
    seeds = SEEDS["framer"]
    data = mutate(seeds[index % len(seeds)], random.Random(seed), max_len=4096)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    whole, whole_error = run_framer([data])
    chunked, chunked_error = run_framer(chunks)
    assert chunked == whole
    assert describe(chunked_error) == describe(whole_error)


def describe(error: SipParseError | None) -> tuple[int, str] | None:
    return None if error is None else (error.status_code, error.reason)


def test_framer_error_is_sticky() -> None:
    """After an error the framer keeps raising it: no resynchronisation on garbage."""
    framer = StreamFramer()
    framer.feed(b"GARBAGE\r\n\r\n")
    with pytest.raises(SipParseError) as first:
        framer.next_event()
    for _ in range(2):
        with pytest.raises(SipParseError) as again:
            framer.feed(b"OPTIONS sip:a@b SIP/2.0\r\nl: 0\r\n\r\n")
            framer.next_event()
        assert again.value is first.value
