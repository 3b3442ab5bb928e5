"""Stage 6: mask personal information with fixed tokens.

    e-mail address                                   -> [EMAIL]
    phone: international (+CC ...), Chinese mobile   -> [PHONE]
           (1[3-9]xxxxxxxxx, optional +86/0086 and
           spaces/dashes), North American
           (555-123-4567, (555) 123-4567), Chinese
           landline with area code (010-12345678)
    Chinese resident ID (18 characters, birth date
    and ISO 7064 MOD 11-2 check digit)                -> [ID]
    payment card (13–19 digits, Luhn check)           -> [CARD]
    IPv4 and IPv6 address                             -> [IP]

Digit boundaries are explicit ASCII look-arounds instead of \\b, because Chinese characters are
word characters: in "电话13812345678" there is no \\b before the 1. Numbers are only masked when
their shape *and* their check (checksum, Luhn, date, digit count, address syntax) pass, so years,
prices, dates, times, versions and ordinary counts stay.
"""
from __future__ import annotations

import ipaddress
import re

TOKENS = {"email": "[EMAIL]", "phone": "[PHONE]", "id_card": "[ID]", "credit_card": "[CARD]", "ip": "[IP]"}
KINDS = tuple(TOKENS)

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
# Linear time: a match may only start where a run of local-part characters starts (the look-
# behind), so a failed attempt is never retried from each later position of the same run; without
# it one 20k-character token took 0.47 s (quadratic). Every other repetition is followed by a
# character its class cannot hold ('@', '.'), so backtracking is bounded by one pass.
EMAIL_RE = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# IPv6 candidate: hex groups and at least two colons, maybe an IPv4 tail; checked by ipaddress
_IP4 = _OCTET + r"(?:\." + _OCTET + "){3}"
IP6_RE = re.compile(r"(?<![0-9A-Za-z:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:" + _IP4 + r"|[0-9A-Fa-f]{0,4})"
                    r"(?![0-9A-Za-z:]|\.[0-9])")
# Number-shaped items, one scan. Alternatives are tried in this order at each start position;
# the leading look-ahead lets every other position fail after one character test.
_NUMERIC = [
    ("ip4", r"(?<![0-9.])" + _IP4 + r"(?![0-9]|\.[0-9])"),
    ("id_card", r"(?<![0-9])[1-9][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])"
                r"(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx](?![0-9])"),
    ("card", r"(?<![0-9+-])(?:[0-9]{13,19}|[0-9]{4}(?:[ -][0-9]{4}){2,3}(?:[ -][0-9]{1,4})?"
             r"|[0-9]{4}[ -][0-9]{6}[ -][0-9]{5})(?![0-9])"),
    ("cn_mobile", r"(?<![0-9])(?:(?:\+|00)86[ -]?)?1[3-9][0-9](?:[ -]?[0-9]{4}){2}(?![0-9])"),
    ("intl_phone", r"(?<![0-9A-Za-z+])\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,4}\)?){2,5}(?![0-9])"),
    ("na_phone", r"(?<![0-9])(?:\([0-9]{3}\) ?|[0-9]{3}[-.])[0-9]{3}[-.][0-9]{4}(?![0-9])"),
    ("cn_landline", r"(?<![0-9])0[1-9][0-9]{1,2}-[0-9]{7,8}(?![0-9])"),
]
NUMERIC_RE = re.compile("(?=[0-9+(])(?:" + "|".join(f"(?P<{name}>{pattern})" for name, pattern in _NUMERIC) + ")")
_CN_MOBILE = re.compile(_NUMERIC[3][1])
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
# a text without a digit followed by six more digits/separators has no number-shaped item
_DIGIT_RUN = re.compile(r"[0-9][0-9 ().-]{6}")


def id_card_ok(s: str) -> bool:
    total = sum(int(c) * w for c, w in zip(s[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == s[17].upper()


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = ord(c) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _digits(s: str) -> str:
    return "".join(c for c in s if c.isdigit())


def _classify(kind: str, s: str) -> str | None:
    """The PII kind a regex candidate really is, or None when its check fails."""
    if kind == "email":
        return "email"
    if kind == "ip6":
        try:
            ipaddress.IPv6Address(s)
        except ValueError:
            return None
        hexdigits = sum(c in "0123456789abcdefABCDEF" for c in s)
        # "a::b", "dead::beef" and C++ "std::" are valid or near-valid syntax, not addresses
        return "ip" if hexdigits >= 4 and any(c.isdigit() for c in s) else None
    if kind == "ip4":
        return "ip"
    if kind == "id_card":
        if id_card_ok(s):
            return "id_card"
        return "credit_card" if luhn_ok(s) else None
    if kind == "card":
        digits = _digits(s)
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            return "credit_card"
        return "phone" if _CN_MOBILE.fullmatch(s) else None
    if kind == "intl_phone":
        return "phone" if 8 <= len(_digits(s)) <= 15 else None
    return "phone"  # cn_mobile, na_phone, cn_landline: the shape is the check


def mask_pii(text: str, counts: dict[str, int]) -> str:
    """`text` with every detected item replaced by its token; `counts[kind]` is increased.
    E-mail first (an address may hold digits: 13812345678@qq.com), then IPv6 (it may end in an
    IPv4 address), then the number-shaped items."""

    def replace(kind: str, match: re.Match) -> str:
        found = _classify(kind or match.lastgroup, match.group())
        if found is None:
            return match.group()
        counts[found] = counts.get(found, 0) + 1
        return TOKENS[found]

    if "@" in text:
        text = EMAIL_RE.sub(lambda m: replace("email", m), text)
    if "::" in text or text.count(":") >= 7:
        text = IP6_RE.sub(lambda m: replace("ip6", m), text)
    if _DIGIT_RUN.search(text):
        text = NUMERIC_RE.sub(lambda m: replace("", m), text)
    return text
