"""RFC 3261 §25 grammar (plus RFC 3966 and RFC 3986 bits) as regular expressions.

Each rule is quoted from the RFC above the regex string that implements it, and
rules are composed with ``str.format(**globals())`` the way h11's ``_abnf.py``
does. Only the rules the parser and the typed header values use are here.
Where we are deliberately more lenient than the ABNF, the comment says so and
why. Everything is compiled once, at import.
"""

from __future__ import annotations

import re

__all__ = [
    "CONTENT_TYPE_FAST_RE",
    "CONTENT_TYPE_RE",
    "CSEQ_RE",
    "GENERIC_PARAM_RE",
    "HOSTNAME_RE",
    "IPV4_RE",
    "IPV6_CHARS_RE",
    "METHOD_RE",
    "NAME_ADDR_FAST_RE",
    "OPAQUE_URI_RE",
    "SCHEME_RE",
    "SIMPLE_PARAMS_RE",
    "SIP_URI_RE",
    "SIP_VERSION_RE",
    "STATUS_LINE_RE",
    "TEL_URI_RE",
    "TOKEN_RE",
    "VIA_FAST_RE",
    "VIA_SENT_RE",
    "digits_value",
]

# alphanum  =  ALPHA / DIGIT
alphanum = r"A-Za-z0-9"

# token       =  1*(alphanum / "-" / "." / "!" / "%" / "*"
#                / "_" / "+" / "`" / "'" / "~" )
token_char = r"{alphanum}\-.!%*_+`'~".format(**globals())
token = r"[{token_char}]+".format(**globals())

# LWS  =  [*WSP CRLF] 1*WSP ; linear whitespace
# SWS  =  [LWS] ; sep whitespace
# Folding (the CRLF) is removed while header lines are split, so inside a
# header value LWS is just SP / HTAB.
sws = r"[ \t]*"

# escaped     =  "%" HEXDIG HEXDIG
escaped = r"%[0-9A-Fa-f]{2}"

# mark        =  "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
# unreserved  =  alphanum / mark
unreserved = r"{alphanum}\-_.!~*'()".format(**globals())

# user-unreserved  =  "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
# user             =  1*( unreserved / escaped / user-unreserved )
# (RFC 2806/3966 telephone-subscriber in the user part uses the same set.)
user = r"(?:[{unreserved}&=+$,;?/]|{escaped})+".format(**globals())

# password         =  *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
password = r"(?:[{unreserved}&=+$,]|{escaped})*".format(**globals())

# hostname         =  *( domainlabel "." ) toplabel [ "." ]
# domainlabel      =  alphanum / alphanum *( alphanum / "-" ) alphanum
# toplabel         =  ALPHA / ALPHA *( alphanum / "-" ) alphanum
# Lenient: "_" is accepted inside labels because real deployments use it in
# host names (SRV-style names, container hosts) and rejecting them only
# breaks interop; the top label rule is checked separately by the URI code.
domainlabel = r"[{alphanum}_](?:[{alphanum}\-_]*[{alphanum}_])?".format(**globals())
hostname = r"(?:{domainlabel}\.)*{domainlabel}\.?".format(**globals())
HOSTNAME_RE = re.compile(hostname)

# IPv4address    =  1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT
# Stricter than the ABNF: each octet is also 0-255 (RFC 791), so "300.1.1.1"
# does not match (and is not a host name either, its top label being numeric).
octet = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
ipv4 = r"{octet}\.{octet}\.{octet}\.{octet}".format(**globals())
IPV4_RE = re.compile(ipv4)

# IPv6reference  =  "[" IPv6address "]"
# The exact IPv6address grammar is checked with the ipaddress module; the
# regex only delimits the candidate.
ipv6_chars = r"[0-9A-Fa-f:.]+"
IPV6_CHARS_RE = re.compile(ipv6_chars)

# host             =  hostname / IPv4address / IPv6reference
# (IPv4address is a subset of the hostname character set here)
host = r"(?:\[{ipv6_chars}\]|[{alphanum}\-_.]+)".format(**globals())

# port           =  1*DIGIT
port = r"[0-9]+"

# paramchar         =  param-unreserved / unreserved / escaped
# param-unreserved  =  "[" / "]" / "/" / ":" / "&" / "+" / "$"
paramchar = r"(?:[\[\]/:&+${unreserved}]|{escaped})".format(**globals())

# uri-parameters    =  *( ";" uri-parameter)
# other-param       =  pname [ "=" pvalue ]
# pname             =  1*paramchar
# pvalue            =  1*paramchar
uri_parameters = r"(?:;{paramchar}+(?:={paramchar}+)?)*".format(**globals())

# headers         =  "?" header *( "&" header )
# header          =  hname "=" hvalue
# hname           =  1*( hnv-unreserved / unreserved / escaped )
# hvalue          =  *( hnv-unreserved / unreserved / escaped )
# hnv-unreserved  =  "[" / "]" / "/" / "?" / ":" / "+" / "$"
hnv = r"(?:[\[\]/?:+${unreserved}]|{escaped})".format(**globals())
uri_headers = r"{hnv}+={hnv}*(?:&{hnv}+={hnv}*)*".format(**globals())

# SIP-URI          =  "sip:" [ userinfo ] hostport uri-parameters [ headers ]
# SIPS-URI         =  "sips:" [ userinfo ] hostport uri-parameters [ headers ]
# userinfo         =  ( user / telephone-subscriber ) [ ":" password ] "@"
# hostport         =  host [ ":" port ]
# (applied to the text after "scheme:"; im: and pres: URIs, RFC 3860/3859,
# are mailbox-shaped and parsed with the same rule)
SIP_URI_RE = re.compile(
    r"(?:(?P<user>{user})(?::(?P<password>{password}))?@)?"
    r"(?P<host>{host})(?::(?P<port>{port}))?"
    r"(?P<params>{uri_parameters})"
    r"(?:\?(?P<headers>{uri_headers}))?".format(**globals())
)

# scheme         =  ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")

# RFC 3966:
# telephone-subscriber  = global-number / local-number
# global-number-digits  = "+" *phonedigit DIGIT *phonedigit
# local-number-digits   = *phonedigit-hex (HEXDIG / "*" / "#") *phonedigit-hex
# phonedigit            = DIGIT / [ visual-separator ]
# phonedigit-hex        = HEXDIG / "*" / "#" / [ visual-separator ]
# visual-separator      = "-" / "." / "(" / ")"
# par                   = parameter / extension / isdn-subaddress
tel_number = r"(?:\+[0-9\-.()]*[0-9][0-9\-.()]*|[0-9A-Fa-f*#\-.()]*[0-9A-Fa-f*#][0-9A-Fa-f*#\-.()]*)"
TEL_URI_RE = re.compile(r"(?P<number>{tel_number})(?P<params>{uri_parameters})".format(**globals()))

# absoluteURI    =  scheme ":" ( hier-part / opaque-part )
# uric           =  reserved / unreserved / escaped
# reserved    =  ";" / "/" / "?" / ":" / "@" / "&" / "=" / "+" / "$" / ","
OPAQUE_URI_RE = re.compile(r"(?:[;/?:@&=+$,{unreserved}]|{escaped})+".format(**globals()))

# Method            =  INVITEm / ACKm / ... / extension-method
# extension-method  =  token
METHOD_RE = re.compile(token)
TOKEN_RE = re.compile(token)

# SIP-Version    =  "SIP" "/" 1*DIGIT "." 1*DIGIT
# (ABNF literals are case-insensitive, so "sip/2.0" is well-formed; only
# 2.0 is supported, anything else earns a 505)
SIP_VERSION_RE = re.compile(r"[Ss][Ii][Pp]/[0-9]+\.[0-9]+")

# Status-Line     =  SIP-Version SP Status-Code SP Reason-Phrase CRLF
# Status-Code     =  3DIGIT (with extension-code)
# Reason-Phrase   =  *(reserved / unreserved / escaped
#                    / UTF8-NONASCII / UTF8-CONT / SP / HTAB)
# Lenient: a missing SP before an empty reason phrase is accepted.
STATUS_LINE_RE = re.compile(
    r"(?P<version>[^ ]+) (?P<code>[0-9]{3})(?: (?P<reason>[^\x00-\x08\x0a-\x1f\x7f]*))?"
)

# The common case of ``*( SEMI generic-param )``: no whitespace and no quoted
# strings, so the parameters can be split on ";" and "=" after one match.
SIMPLE_PARAMS_RE = re.compile(r"(?:;{token}(?:=[{token_char}:]+)?)*".format(**globals()))

# Fast paths: the whitespace-free spellings nearly every sender uses, matched
# in one go. Anything they do not match goes through the general rules.
simple_params = r"(?:;{token}(?:=[{token_char}:]+)?)*".format(**globals())
# hostname whose toplabel starts with a letter (so not a mistyped address)
alpha_hostname = r"(?:{domainlabel}\.)*[A-Za-z](?:[{alphanum}\-_]*[{alphanum}_])?\.?".format(**globals())
# name-addr with a plain (escape-free) quoted or token display name
NAME_ADDR_FAST_RE = re.compile(
    r'(?:"(?P<quoted>[^"\\\x00-\x1f]*)" ?|(?P<plain>{token}(?: {token})*) ?)?'
    r"<(?P<uri>[^<>\s\"]+)>(?P<params>{simple_params})".format(**globals())
)
# via-parm: SIP/2.0/transport host[:port]*(;param)
VIA_FAST_RE = re.compile(
    r"SIP/2\.0/(?P<transport>{token}) (?P<host>{ipv4}|{alpha_hostname}|\[{ipv6_chars}\])"
    r"(?::(?P<port>[0-9]{{1,5}}))?(?P<params>{simple_params})".format(**globals())
)
CONTENT_TYPE_FAST_RE = re.compile(
    r"(?P<type>{token})/(?P<subtype>{token})(?P<params>{simple_params})".format(**globals())
)

# generic-param  =  token [ EQUAL gen-value ]
# gen-value      =  token / host / quoted-string
# EQUAL   =  SWS "=" SWS
# quoted-string  =  SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE
# qdtext         =  LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# quoted-pair    =  "\" (%x00-09 / %x0B-0C / %x0E-7F)
quoted_string = r'"(?:[^"\\\r\n]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'
# Lenient: ":" is accepted in unquoted values because via-received carries a
# bare IPv6address (``received=2001:db8::1``, §20.42), which is not a token.
gen_value = r"(?:[{token_char}:]+|\[{ipv6_chars}\]|{quoted_string})".format(**globals())
GENERIC_PARAM_RE = re.compile(
    r"{sws};{sws}(?P<name>{token})(?:{sws}={sws}(?P<value>{gen_value}))?".format(**globals())
)

# Via               =  ( "Via" / "v" ) HCOLON via-parm *(COMMA via-parm)
# via-parm          =  sent-protocol LWS sent-by *( SEMI via-params )
# sent-protocol     =  protocol-name SLASH protocol-version SLASH transport
# protocol-name     =  "SIP" / token
# protocol-version  =  token
# transport         =  "UDP" / "TCP" / "TLS" / "SCTP" / other-transport
# sent-by           =  host [ COLON port ]
# SLASH   =  SWS "/" SWS ; COLON = SWS ":" SWS
VIA_SENT_RE = re.compile(
    r"{sws}(?P<name>{token}){sws}/{sws}(?P<version>{token}){sws}/{sws}(?P<transport>{token})"
    r"[ \t]+(?P<host>{host})(?:{sws}:{sws}(?P<port>{port}))?".format(**globals())
)

# CSeq  =  "CSeq" HCOLON 1*DIGIT LWS Method
CSEQ_RE = re.compile(r"(?P<number>[0-9]+)[ \t]+(?P<method>{token})".format(**globals()))

# Content-Type     =  ( "Content-Type" / "c" ) HCOLON media-type
# media-type       =  m-type SLASH m-subtype *(SEMI m-parameter)
# m-type / m-subtype / m-attribute  =  token (or extension tokens)
# m-parameter      =  m-attribute EQUAL m-value
# m-value          =  token / quoted-string
CONTENT_TYPE_RE = re.compile(r"(?P<type>{token}){sws}/{sws}(?P<subtype>{token})".format(**globals()))


def digits_value(digits: str, max_digits: int) -> int | None:
    """The value of a run of ASCII digits (already checked), or None past ``max_digits``.

    Leading zeros do not count (``1*DIGIT`` allows them). Needed because
    ``int()`` refuses more than 4,300 digits with ValueError whatever their
    value, and a peer chooses these digits; every caller's bound is far
    below that.
    """
    if len(digits) <= max_digits:
        return int(digits)
    significant = digits.lstrip("0")
    return int(significant or "0") if len(significant) <= max_digits else None
