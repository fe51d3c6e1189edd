"""RFC 3862 (message/cpim) grammar as regular expressions, plus header-value escaping.

Each regex string sits under the ABNF rule it implements, quoted from RFC 3862
§3.6 (general header syntax) and §4 (the standard headers). Rules compose with
``str.format(**globals())`` in the h11 ``_abnf.py`` manner and are compiled
once at import. Leniencies are commented next to the rule they relax and are
applied by the parser, never by the generator ("strict on send").

Everything here works on ``str`` (the header block is decoded as UTF-8 first,
RFC 3862 §2.2), so "UCS-high" below means "any code point above U+007F". The ABNF's
UTF8-multi also admits the obsolete 5- and 6-byte forms; Python's strict
UTF-8 decoder (RFC 3629) refuses them, and so do we.

Public because RFC 5438 §10 writes the IMDN headers in this grammar: :mod:`sipimdn.imdn` builds
its rules from the rule strings here (``name``, ``token``, ``string``, ``number``) and checks
Message-IDs with ``TOKEN_RE``/``LENIENT_TOKEN_RE``.
"""

from __future__ import annotations

import re

__all__ = [
    "ADDRESS_VALUE_RE",
    "DATE_TIME_LENIENT_RE",
    "DATE_TIME_RE",
    "HEADER_LINE_LENIENT_RE",
    "HEADER_LINE_RE",
    "HEADER_NAME_RE",
    "LANGUAGE_TAG_RE",
    "LENIENT_TOKEN_RE",
    "NAME_RE",
    "NS_VALUE_RE",
    "PARAMETER_RE",
    "TOKEN_RE",
    "URI_RE",
    "escape",
    "name",
    "number",
    "string",
    "token",
    "unescape",
]

# NAMECHAR = %x21 / %x23-27 / %x2a-2b / %x2d / %x5e-60 / %x7c / %x7e
#          / ALPHA / DIGIT
# (no ".", no separators, no SP; "." is reserved for the namespace prefix, §3.1)
namechar = r"[!#$%&'*+\-^_`|~A-Za-z0-9]"

# TOKENCHAR = NAMECHAR / "." / UCS-high
tokenchar = r"[!#$%&'*+\-^_`|~A-Za-z0-9.\u0080-\U0010ffff]"

# Name = 1*NAMECHAR
name = r"{namechar}+".format(**globals())

# Name-prefix = Name
# Header-name = [ Name-prefix "." ] Name
header_name = r"(?:(?P<prefix>{name})\.)?(?P<local>{name})".format(**globals())

# Token = 1*TOKENCHAR
token = r"{tokenchar}+".format(**globals())

# Number = 1*DIGIT
number = r"[0-9]+"

# Escape = "\" ( "u" 4(HEXDIG) / "b" / "t" / "n" / "r" / DQUOTE / "'" / "\" )
# The parser honours any "\x" (RFC 3862 §2.3.1), so inside a String we accept "\" + any char.
escape_seq = r"\\[^\x00-\x1f\x7f]"

# Str-char = %x20-21 / %x23-5B / %x5D-7E / UCS-high
str_char = r"[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]"

# String = DQUOTE *( Str-char / Escape ) DQUOTE
string = r'"(?:{str_char}|{escape_seq})*"'.format(**globals())

# Language-tag = <RFC 3066>: Primary-subtag *( "-" Subtag )
#   Primary-subtag = 1*8ALPHA ; Subtag = 1*8(ALPHA / DIGIT)
language_tag = r"[A-Za-z]{{1,8}}(?:-[A-Za-z0-9]{{1,8}})*".format(**globals())

# Parameter   = Lang-param / Ext-param
# Lang-param  = "lang=" Language-tag
# Ext-param   = Param-name "=" Param-value
# Param-name  = Name
# Param-value = Token / Number / String
# (Lang-param is an Ext-param whose name is "lang"; the message layer checks the tag.)
parameter = r"(?P<pname>{name})=(?P<pvalue>{string}|{token}|{number})".format(**globals())

# HEADERCHAR = UCS-no-CTL / Escape   (no control characters at all, RFC 3862 §2.2)
header_value = r"[^\x00-\x1f\x7f]*"

# Header = Header-name ":" *( ";" Parameter ) SP Header-value CRLF
# (CRLF is stripped by the line splitter before this regex runs.)
param_list = r"(?:;{name}=(?:{string}|{token}|{number}))*".format(**globals())
header_line = r"{header_name}:(?P<params>{param_list}) (?P<value>{header_value})".format(**globals())

# Leniency: real senders omit the SP after the colon (``imdn.Message-ID:abc``).
# Only used when the strict form does not match.
header_line_lenient = r"{header_name}:(?P<params>{param_list})(?P<value>{header_value})".format(**globals())

# URI = <absoluteURI, RFC 2396>:  scheme ":" ( hier_part / opaque_part )
#   scheme = alpha *( alpha / digit / "+" / "-" / "." )
# We check the scheme strictly and the rest loosely (no SP, CTL, "<", ">", DQUOTE),
# which is what the "<" URI ">" framing of CPIM needs to stay unambiguous.
uri = r"[A-Za-z][A-Za-z0-9+\-.]*:[^\x00-\x20\x7f<>\"]+"

# From-header / To-header / cc-header = Name ": " [ Formal-name ] "<" URI ">"
# Formal-name = 1*( Token SP ) / String
# Leniency: SP between a String and "<" (every client writes it), and no SP
# between the last Token and "<".
formal_name = r"(?:{token} )*{token} ?|{string} ?".format(**globals())
address_value = r"(?P<display>{formal_name})?<(?P<uri>{uri})>".format(**globals())

# NS-header = "NS" ": " [ Name-prefix ] "<" URI ">"
# Leniency: RFC 3862's own examples and RFC 5438 write a SP between prefix and "<"
# ("NS: imdn <urn:ietf:params:imdn>"); the ABNF has none. Accept both.
ns_value = r"(?:(?P<prefix>{name}) ?)?<(?P<uri>{uri})>".format(**globals())

# DateTime-header = "DateTime" ": " date-time      ; RFC 3339 §5.6:
#   date-time = full-date "T" full-time
#   full-date = date-fullyear "-" date-month "-" date-mday   (4DIGIT "-" 2DIGIT "-" 2DIGIT)
#   full-time = partial-time time-offset
#   partial-time = time-hour ":" time-minute ":" time-second [time-secfrac]
#   time-secfrac = "." 1*DIGIT
#   time-offset = "Z" / time-numoffset ; time-numoffset = ("+" / "-") time-hour ":" time-minute
date_time = (
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})[Tt]"
    r"(?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})(?P<frac>\.[0-9]+)?"
    r"(?P<off>[Zz]|[+\-][0-9]{2}:[0-9]{2})"
)
# Leniency (seen from deployed clients): one-digit offset hours ("+5:30"), offsets without
# a colon ("+0530") or hour-only ("+05"), a space instead of "T", a missing offset
# (read as UTC). The raw string is always kept for echoing in <datetime>.
date_time_lenient = (
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{1,2})-(?P<d>[0-9]{1,2})[Tt ]"
    r"(?P<h>[0-9]{1,2}):(?P<mi>[0-9]{2})(?::(?P<s>[0-9]{2})(?P<frac>\.[0-9]+)?)?"
    r"(?P<off>[Zz]|[+\-][0-9]{1,2}(?::?[0-9]{2})?)?"
)

# Leniency for values that should be a Token but come from peers that put
# separators in them (``abc@host``): one or more characters, no SP, no CTL.
# Used on receive only; everything we generate matches TOKEN_RE.
lenient_token = r"[^\x00-\x20\x7f]+"

NAME_RE = re.compile(name)
LENIENT_TOKEN_RE = re.compile(lenient_token)
TOKEN_RE = re.compile(token)
HEADER_NAME_RE = re.compile(header_name)
PARAMETER_RE = re.compile(parameter)
LANGUAGE_TAG_RE = re.compile(language_tag)
HEADER_LINE_RE = re.compile(header_line)
HEADER_LINE_LENIENT_RE = re.compile(header_line_lenient)
URI_RE = re.compile(uri)
ADDRESS_VALUE_RE = re.compile(address_value)
NS_VALUE_RE = re.compile(ns_value)
DATE_TIME_RE = re.compile(date_time)
DATE_TIME_LENIENT_RE = re.compile(date_time_lenient)

# -- escapes (RFC 3862 §2.3, §2.3.1) ------------------------------------------------

_SHORT_ESCAPES = {"\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_UNESCAPE_SHORT = {"b": "\b", "t": "\t", "n": "\n", "r": "\r"}
_ESCAPE_TOKEN_RE = re.compile(r"\\(u[0-9A-Fa-f]{4}|.|$)", re.DOTALL)


def escape(text: str, quote: str | None = None) -> str:
    """Escape ``text`` for use in a CPIM header value (generator rules of RFC 3862 §2.3.1).

    Backslash, BS, TAB, LF and CR get their short forms; other control
    characters become ``\\uXXXX``; the quote character of an enclosing
    quoted string (``quote``) is escaped; nothing else is (non-ASCII is sent
    as UTF-8, as §2.3.1 requires).
    """
    out: list[str] = []
    for ch in text:
        short = _SHORT_ESCAPES.get(ch)
        if short is not None:
            out.append(short)
        elif ch < "\x20" or ch == "\x7f":
            out.append(f"\\u{ord(ch):04X}")
        elif quote is not None and ch == quote:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def unescape(text: str) -> str:
    """Decode CPIM escapes (parser rules of RFC 3862 §2.3.1).

    Every backslash starts an escape; an unknown escape yields the character
    after the backslash; a lone backslash at the very end is dropped. Two
    consecutive ``\\uD8xx\\uDCxx`` escapes form one supplementary code point.

    Raises ``ValueError`` for a lone surrogate (cannot be UTF-8 encoded).
    """
    if "\\" not in text:
        return text
    out: list[str] = []
    pos = 0
    pending_high: int | None = None
    for m in _ESCAPE_TOKEN_RE.finditer(text):
        literal = text[pos : m.start()]
        if literal and pending_high is not None:
            raise ValueError("lone high surrogate in \\u escape")
        out.append(literal)
        pos = m.end()
        body = m.group(1)
        if len(body) == 5:  # uXXXX
            code = int(body[1:], 16)
            if 0xD800 <= code <= 0xDBFF:
                if pending_high is not None:
                    raise ValueError("lone high surrogate in \\u escape")
                pending_high = code
                continue
            if 0xDC00 <= code <= 0xDFFF:
                if pending_high is None:
                    raise ValueError("lone low surrogate in \\u escape")
                code = 0x10000 + ((pending_high - 0xD800) << 10) + (code - 0xDC00)
                pending_high = None
            elif pending_high is not None:
                raise ValueError("lone high surrogate in \\u escape")
            out.append(chr(code))
            continue
        if pending_high is not None:
            raise ValueError("lone high surrogate in \\u escape")
        if body == "":  # lone backslash at the end: dropped
            continue
        out.append(_UNESCAPE_SHORT.get(body, body))
    if pending_high is not None:
        raise ValueError("lone high surrogate in \\u escape")
    out.append(text[pos:])
    return "".join(out)
