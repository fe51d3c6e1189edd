"""Digest authentication: RFC worked examples, parsing, selection and the retry rules."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipimdn.auth import (
    AUTHORIZATION,
    PROXY_AUTHORIZATION,
    Authenticator,
    Challenge,
    Credentials,
    DigestChallenge,
    build_authorization,
    challenge_header_for,
    digest_challenges,
    digest_response,
    parse_challenges,
    select_challenge,
)
from sipimdn.errors import AuthenticationFailed, LocalProtocolError, RemoteProtocolError


def params_of(value: str) -> dict[str, str]:
    """Read an Authorization value back with the same auth-param grammar."""
    (parsed,) = parse_challenges(value)
    assert parsed.scheme == "Digest"
    return dict(parsed.params)


def one_digest(value: str, *, proxy: bool = False) -> DigestChallenge:
    (challenge,) = digest_challenges([value], proxy=proxy)
    return challenge


# --- RFC worked examples -------------------------------------------------------

RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


@pytest.mark.parametrize(
    ("alg", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1(alg: str, expected: str) -> None:
    challenge = one_digest(RFC7616_CHALLENGE.format(alg=alg))
    value = build_authorization(
        challenge,
        Credentials("Mufasa", "Circle of Life"),
        method="GET",
        uri="/dir/index.html",
        nc=1,
        cnonce=RFC7616_CNONCE,
    )
    assert params_of(value) == {
        "username": "Mufasa",
        "realm": "http-auth@example.org",
        "uri": "/dir/index.html",
        "algorithm": alg,
        "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "nc": "00000001",
        "cnonce": RFC7616_CNONCE,
        "qop": "auth",
        "response": expected,
        "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
    }
    # qop and nc are tokens on the wire, the rest quoted (RFC 7616 §3.4).
    assert "qop=auth," in value and "nc=00000001" in value and 'uri="/dir/index.html"' in value


def test_rfc7616_section_3_9_2_userhash_sha512_256_with_errata() -> None:
    # The published example was computed with a truncated SHA-512 (errata 4897);
    # these are the corrected SHA-512/256 values.
    challenge = one_digest(
        'Digest realm="api@example.org", qop="auth", algorithm=SHA-512-256, '
        'nonce="5TsQWLVdgBdmrQ0XsxbDODV+57QdFR34I9HAbC/RVvkK", '
        'opaque="HRPCssKJSGjCrkzDg8OhwpzCiGPChXYjwrI2QmXDnsOS", charset=UTF-8, userhash=true'
    )
    assert challenge.userhash
    value = build_authorization(
        challenge,
        Credentials("J\u00e4s\u00f8n Doe", "Secret, or not?"),
        method="GET",
        uri="/doe.json",
        cnonce="NTg6RKcb9boFIAS3KrFK9BGeh+iDa/sm6jUMp2wds69v",
    )
    got = params_of(value)
    assert got["username"] == "793263caabb707a56211940d90411ea4a575adeccb7e360aeb624ed06ece9b0b"
    assert got["response"] == "3798d4131c277846293534c3edc11bd8a5e4cdcbff78b05db9d95eeb1cec68a5"
    assert got["userhash"] == "true"


def test_rfc2617_section_3_5() -> None:
    challenge = one_digest(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    value = build_authorization(
        challenge,
        Credentials("Mufasa", "Circle Of Life"),
        method="GET",
        uri="/dir/index.html",
        cnonce="0a4f113b",
    )
    got = params_of(value)
    assert got["response"] == "6629fae49393a05397450978507c4ef1"
    assert "algorithm" not in got  # the challenge named none, so neither do we


def test_legacy_no_qop_rfc2069_example() -> None:
    # RFC 2069 §2.4 example (response corrected by its errata); RFC 2617 §3.2.2.1 form.
    challenge = one_digest(
        'Digest realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    value = build_authorization(
        challenge, Credentials("Mufasa", "CircleOfLife"), method="GET", uri="/dir/index.html"
    )
    got = params_of(value)
    assert got["response"] == "1949323746fe6a43ef61f9606e7febea"
    assert not {"qop", "nc", "cnonce"} & got.keys()


def _h(name: str, text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.new(name, data).hexdigest()


def test_auth_int_hashes_the_body_and_empty_body_is_h_of_empty() -> None:
    def response(body: bytes) -> str:
        return digest_response(
            algorithm="MD5", username="u", password="p", realm="r", nonce="n",
            method="MESSAGE", uri="sip:b@x", qop="auth-int", nc=3, cnonce="c", body=body,
        )

    ha1 = _h("md5", "u:r:p")
    empty_ha2 = _h("md5", "MESSAGE:sip:b@x:d41d8cd98f00b204e9800998ecf8427e")
    assert response(b"") == _h("md5", f"{ha1}:n:00000003:c:auth-int:{empty_ha2}")
    body_ha2 = _h("md5", f"MESSAGE:sip:b@x:{_h('md5', b'hello')}")
    assert response(b"hello") == _h("md5", f"{ha1}:n:00000003:c:auth-int:{body_ha2}")


def test_sess_variant_folds_nonce_and_cnonce_into_ha1() -> None:
    got = digest_response(
        algorithm="SHA-256-sess", username="u", password="p", realm="r", nonce="n",
        method="REGISTER", uri="sip:r", qop="auth", nc=1, cnonce="c",
    )
    ha1 = _h("sha256", f"{_h('sha256', 'u:r:p')}:n:c")
    assert got == _h("sha256", f"{ha1}:n:00000001:c:auth:{_h('sha256', 'REGISTER:sip:r')}")


def test_auth_int_chosen_only_when_preferred_or_alone() -> None:
    both = one_digest('Digest realm="r", nonce="n", qop="auth-int,auth"')
    creds = Credentials("u", "p")
    assert params_of(build_authorization(both, creds, method="M", uri="sip:x"))["qop"] == "auth"
    preferred = build_authorization(both, creds, method="M", uri="sip:x", prefer_auth_int=True)
    assert params_of(preferred)["qop"] == "auth-int"
    only = one_digest('Digest realm="r", nonce="n", qop="auth-int"')
    assert params_of(build_authorization(only, creds, method="M", uri="sip:x"))["qop"] == "auth-int"


def test_cnonce_defaults_to_128_random_bits() -> None:
    challenge = one_digest('Digest realm="r", nonce="n", qop=auth')
    creds = Credentials("u", "p")
    first = params_of(build_authorization(challenge, creds, method="M", uri="sip:x"))["cnonce"]
    second = params_of(build_authorization(challenge, creds, method="M", uri="sip:x"))["cnonce"]
    assert len(first) == 32 and first != second


def test_built_values_cannot_inject_header_lines() -> None:
    challenge = one_digest('Digest realm="r", nonce="n", qop=auth')
    with pytest.raises(LocalProtocolError):
        build_authorization(challenge, Credentials("u\r\nEvil: 1", "p"), method="M", uri="sip:x")


def test_quotes_and_backslashes_are_escaped_on_output() -> None:
    challenge = one_digest(r'Digest realm="a \"quoted\" \\ realm", nonce="n", qop=auth')
    assert challenge.realm == 'a "quoted" \\ realm'
    value = build_authorization(challenge, Credentials('us"er', "p"), method="M", uri="sip:x")
    got = params_of(value)
    assert got["realm"] == challenge.realm and got["username"] == 'us"er'


# --- parsing -----------------------------------------------------------------


def test_several_challenges_in_one_value_and_unknown_params_kept() -> None:
    parsed = parse_challenges(
        'Digest realm="atlanta.com", domain="sip:ss1.carrier.com", qop="auth", '
        'nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="", stale=FALSE, algorithm=MD5, '
        'Digest realm="atlanta.com", nonce="x", algorithm=SHA-256, x-vendor=abc, '
        "Basic realm=\"b\", Negotiate YIIB=="
    )
    assert [c.scheme for c in parsed] == ["Digest", "Digest", "Basic", "Negotiate"]
    assert parsed[0].get("domain") == "sip:ss1.carrier.com"
    assert parsed[0].get("OPAQUE") == ""
    assert parsed[1].get("x-vendor") == "abc"
    assert parsed[3].token68 == "YIIB==" and parsed[3].params == ()
    digest = digest_challenges(
        [
            'Digest realm="atlanta.com", nonce="f84", stale=FALSE',
            'Basic realm="b"',
        ],
        proxy=True,
    )
    assert len(digest) == 1 and digest[0].proxy and not digest[0].stale


def test_lenient_spacing_case_folding_and_empty_elements() -> None:
    (challenge,) = parse_challenges('  ,digest REALM = "r" ,, NONCE=n,\r\n\tQOP="AUTH" , ')
    assert challenge.scheme == "digest" and challenge.is_digest
    assert challenge.params == (("realm", "r"), ("nonce", "n"), ("qop", "AUTH"))
    digest = DigestChallenge.from_challenge(challenge, proxy=False)
    assert digest.qop == ("auth",)
    assert parse_challenges("Bearer") == [Challenge("Bearer", ())]


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        ",,",
        'Digest realm="unterminated',
        'Digest realm="r" nonce="n"',
        'Digest realm="r", realm="s"',
        "Digest realm=",
        "Digest =x",
        'Digest realm="a\nb"',
        "Digest\x00 realm=r",
        '"Digest" realm=r',
        "Digest; realm=r",
        "Negotiate abc== def",
    ],
)
def test_malformed_challenges_raise_remote_error(bad: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_challenges(bad)


def test_digest_challenge_without_realm_or_nonce_is_rejected_but_skipped_in_lists() -> None:
    with pytest.raises(RemoteProtocolError):
        DigestChallenge.from_challenge(parse_challenges('Digest nonce="n"')[0], proxy=False)
    with pytest.raises(RemoteProtocolError):
        DigestChallenge.from_challenge(parse_challenges('Digest realm="r"')[0], proxy=False)
    got = digest_challenges(['Digest realm="r"', 'Digest realm="r", nonce="n"'], proxy=False)
    assert [c.nonce for c in got] == ["n"]


_SAFE_VALUE = st.text(
    alphabet=st.characters(codec="utf-8", blacklist_characters="\r\n\x00"), max_size=20
)
_NAME = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_text_parses_or_raises_remote_error(text: str) -> None:
    try:
        parsed = parse_challenges(text)
    except RemoteProtocolError:
        return
    assert parsed and all(isinstance(c, Challenge) for c in parsed)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_NAME, _SAFE_VALUE, min_size=1, max_size=5))
def test_quoted_parameters_round_trip(params: dict[str, str]) -> None:
    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    value = "Digest " + ", ".join(f"{k}={quote(v)}" for k, v in params.items())
    (parsed,) = parse_challenges(value + ", Digest a=b")[:1]
    assert dict(parsed.params) == params


# --- selection ---------------------------------------------------------------


def test_topmost_supported_challenge_wins_in_the_servers_order() -> None:
    """RFC 8760 §2.4: the server's order is its preference; unsupported ones are skipped."""
    challenges = digest_challenges(
        [
            'Digest realm="r", nonce="0", algorithm=SHA3-512, qop="auth"',
            'Digest realm="r", nonce="1", algorithm=MD5, qop="auth"',
            'Digest realm="r", nonce="2", algorithm=SHA-256, qop="auth", '
            'Digest realm="r", nonce="3", algorithm=SHA-512-256-sess, qop="auth"',
        ],
        proxy=False,
    )
    best = select_challenge(challenges)
    assert best is not None and best.nonce == "1"  # MD5 listed before SHA-256: the server's choice
    assert select_challenge(challenges[2:]) is challenges[2]
    assert select_challenge(challenges[3:]) is challenges[3]
    assert select_challenge(challenges[:1]) is None


def test_equal_strength_keeps_server_order_and_unsupported_is_none() -> None:
    challenges = digest_challenges(
        ['Digest realm="r", nonce="1", algorithm=md5-SESS, qop=auth, Digest realm="r", nonce="2"'],
        proxy=False,
    )
    best = select_challenge(challenges)
    assert best is not None and best.nonce == "1"
    unsupported = digest_challenges(
        ['Digest realm="r", nonce="1", algorithm=SHA3-256, Digest realm="r", nonce="2", qop="auth-conf"'],
        proxy=False,
    )
    assert select_challenge(unsupported) is None
    assert select_challenge([]) is None


# --- the authenticator -------------------------------------------------------


def counter_cnonces() -> Callable[[], str]:
    count = 0

    def make() -> str:
        nonlocal count
        count += 1
        return f"cn{count}"

    return make


def make_auth(*creds: Credentials) -> Authenticator:
    return Authenticator(creds or [Credentials("alice", "s3cret")], cnonce_factory=counter_cnonces())


def test_401_is_answered_with_authorization_and_407_with_proxy_authorization() -> None:
    auth = make_auth()
    attempt = auth.start("MESSAGE", "sip:bob@example.com", b"hi")
    assert attempt.headers == []
    headers = attempt.handle_challenge(407, ['Digest realm="proxy", nonce="p1", qop="auth"'])
    assert [name for name, _ in headers] == [PROXY_AUTHORIZATION]
    got = params_of(headers[0][1])
    assert got["uri"] == "sip:bob@example.com" and got["nc"] == "00000001" and got["cnonce"] == "cn1"
    assert got["response"] == digest_response(
        algorithm="MD5", username="alice", password="s3cret", realm="proxy", nonce="p1",
        method="MESSAGE", uri="sip:bob@example.com", qop="auth", nc=1, cnonce="cn1",
    )
    # The UAS behind the proxy challenges too: the retry carries both answers.
    headers = attempt.handle_challenge(401, ['Digest realm="uas", nonce="u1", algorithm=SHA-256, qop=auth'])
    assert [name for name, _ in headers] == [PROXY_AUTHORIZATION, AUTHORIZATION]
    assert params_of(headers[0][1])["nc"] == "00000002"  # same proxy nonce, used again
    assert attempt.headers == headers and attempt.challenges_answered == 2


def test_second_challenge_after_our_credentials_fails_without_loop() -> None:
    attempt = make_auth().start("REGISTER", "sip:example.com")
    attempt.handle_challenge(401, ['Digest realm="example.com", nonce="n1", qop="auth"'])
    with pytest.raises(AuthenticationFailed, match="rejected"):
        attempt.handle_challenge(401, ['Digest realm="example.com", nonce="n2", qop="auth"'])


def test_stale_nonce_is_retried_exactly_once() -> None:
    attempt = make_auth().start("REGISTER", "sip:example.com")
    attempt.handle_challenge(401, ['Digest realm="example.com", nonce="n1", qop="auth"'])
    headers = attempt.handle_challenge(
        401, ['Digest realm="example.com", nonce="n2", qop="auth", stale=true']
    )
    got = params_of(headers[0][1])
    assert got["nonce"] == "n2" and got["nc"] == "00000001"
    with pytest.raises(AuthenticationFailed):
        attempt.handle_challenge(401, ['Digest realm="example.com", nonce="n3", qop="auth", stale=TRUE'])


def test_stale_with_the_same_nonce_is_a_rejection() -> None:
    attempt = make_auth().start("REGISTER", "sip:example.com")
    attempt.handle_challenge(401, ['Digest realm="r", nonce="n1"'])
    with pytest.raises(AuthenticationFailed):
        attempt.handle_challenge(401, ['Digest realm="r", nonce="n1", stale=true'])


def test_realm_is_remembered_and_next_request_goes_authenticated_up_front() -> None:
    auth = make_auth()
    first = auth.start("REGISTER", "sip:example.com")
    first.handle_challenge(401, ['Digest realm="example.com", nonce="n1", qop="auth", opaque="op"'])
    assert auth.known_realms == [(False, "example.com")]
    second = auth.start("MESSAGE", "sip:bob@example.com", b"x")
    ((name, value),) = second.headers
    got = params_of(value)
    assert name == AUTHORIZATION
    assert got["nonce"] == "n1" and got["nc"] == "00000002" and got["opaque"] == "op"
    assert got["uri"] == "sip:bob@example.com"
    # The cached nonce expired: one fresh answer is allowed even without stale=true.
    headers = second.handle_challenge(401, ['Digest realm="example.com", nonce="n9", qop="auth"'])
    assert params_of(headers[0][1])["nc"] == "00000001"
    with pytest.raises(AuthenticationFailed):
        second.handle_challenge(401, ['Digest realm="example.com", nonce="n10", qop="auth"'])
    assert auth.start("OPTIONS", "sip:x", preemptive=False).headers == []
    auth.forget("example.com")
    assert auth.known_realms == [] and auth.start("OPTIONS", "sip:x").headers == []


def test_credentials_are_chosen_per_realm_with_a_fallback() -> None:
    auth = make_auth(Credentials("a", "pa", realm="one"), Credentials("any", "px"))
    attempt = auth.start("MESSAGE", "sip:x")
    headers = attempt.handle_challenge(
        407, ['Digest realm="one", nonce="1"', 'Digest realm="two", nonce="2"']
    )
    assert [params_of(v)["username"] for _, v in headers] == ["a", "any"]


def test_no_credentials_or_no_supported_algorithm_fails_clearly() -> None:
    only_one = make_auth(Credentials("a", "p", realm="mine"))
    with pytest.raises(AuthenticationFailed, match="no credentials for realm 'theirs'"):
        only_one.start("M", "sip:x").handle_challenge(401, ['Digest realm="theirs", nonce="n"'])
    with pytest.raises(AuthenticationFailed, match="no supported algorithm"):
        make_auth().start("M", "sip:x").handle_challenge(
            401, ['Digest realm="r", nonce="n", algorithm=SHA3-256']
        )
    with pytest.raises(AuthenticationFailed, match="no Digest challenge"):
        make_auth().start("M", "sip:x").handle_challenge(401, ['Basic realm="r"'])
    with pytest.raises(AuthenticationFailed, match="unreadable"):
        make_auth().start("M", "sip:x").handle_challenge(401, ['Digest realm="r'])
    with pytest.raises(AuthenticationFailed):
        make_auth().start("M", "sip:x").handle_challenge(401, [])
    with pytest.raises(LocalProtocolError):
        make_auth().start("M", "sip:x").handle_challenge(403, ['Digest realm="r", nonce="n"'])


def test_rounds_are_bounded_even_with_fresh_realms() -> None:
    attempt = make_auth().start("M", "sip:x")
    for round_ in range(4):
        attempt.handle_challenge(407, [f'Digest realm="r{round_}", nonce="n"'])
    with pytest.raises(AuthenticationFailed, match="4 challenges"):
        attempt.handle_challenge(407, ['Digest realm="r9", nonce="n"'])


def test_secrets_never_show_in_reprs_or_errors() -> None:
    creds = Credentials("alice", "hunter2-secret", realm="r")
    auth = Authenticator([creds])
    attempt = auth.start("REGISTER", "sip:r")
    attempt.handle_challenge(401, ['Digest realm="r", nonce="n"'])
    try:
        attempt.handle_challenge(401, ['Digest realm="r", nonce="m"'])
    except AuthenticationFailed as exc:
        message = str(exc)
    else:  # pragma: no cover
        pytest.fail("second challenge must fail")
    for text in (repr(creds), str(creds), repr(auth), message, repr(attempt.headers)):
        assert "hunter2" not in text


def test_challenge_header_names() -> None:
    assert challenge_header_for(401) == "WWW-Authenticate"
    assert challenge_header_for(407) == "Proxy-Authenticate"
    with pytest.raises(LocalProtocolError):
        challenge_header_for(200)


def test_authentication_info_nextnonce_is_used_up_front_next_time() -> None:
    auth = make_auth()
    first = auth.start("REGISTER", "sip:example.com")
    first.handle_challenge(401, ['Digest realm="example.com", nonce="n1", qop="auth"'])
    first.handle_success('nextnonce="n2", qop=auth, rspauth="abc", cnonce="cn1", nc=00000001')
    ((_, value),) = auth.start("REGISTER", "sip:example.com").headers
    got = params_of(value)
    assert got["nonce"] == "n2" and got["nc"] == "00000001"
    # Junk, or nothing, changes nothing.
    second = auth.start("REGISTER", "sip:example.com")
    second.handle_success('nextnonce="unterminated')
    second.handle_success(None)
    second.handle_success("qop=auth")
    assert params_of(auth.start("REGISTER", "sip:example.com").headers[0][1])["nonce"] == "n2"
