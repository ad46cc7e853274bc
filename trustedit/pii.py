"""Masking of private data (PII) in text that trustedit writes out.

The project rule: private data is masked in every output unless the user asks otherwise.
:func:`mask_text` replaces each recognised item with a placeholder, :func:`mask` does so for every
string inside dicts / lists / tuples (keys, numbers and other values are left alone), and
:func:`count` says how many of each kind a text holds (for reports).

What is recognised (regular expressions, compiled once at first use; each kind checked as below):

* ``[EMAIL]``  e-mail addresses ``local@domain.tld`` (letters, digits, ``._%+-`` in the local part;
  a dotted domain with an alphabetic top-level label of 2+ letters). ``user@localhost`` is not.
* ``[PHONE]``  North American numbers written with separators: ``(555) 123-4567``,
  ``555-123-4567``, ``555.123.4567``, ``555 123 4567``, ``1-555-123-4567``, ``+1 555 123 4567``;
  and international numbers with a leading ``+``: ``+44 20 7946 0958``, ``+33 1 23 45 67 89``,
  ``+49 (0)30 1234567``, ``+442079460958`` (8 to 15 digits, the E.164 limit). Digits without
  separators and without ``+`` (``5551234567``), and 7-digit local numbers (``555-1234``), are
  NOT recognised, so years, IDs and answers are never hit.
* ``[SSN]``    US social security numbers ``123-45-6789`` (dashes required; the never-issued areas
  000, 666, 900-999, group 00 and serial 0000 excluded).
* ``[CARD]``   payment card numbers: 13-19 digits, contiguous or in the usual groups of 4 (Amex
  4-6-5, Diners 4-6-4) separated by single spaces or dashes, starting with 2-6 (the ranges of
  Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay, Maestro) and passing the Luhn check. A
  long ID starting with 2-6 that happens to pass the Luhn check (1 in 10) is masked too.
* ``[IP]``     IPv4 addresses (four dot-separated octets, each 0-255, no leading zeros; a dotted
  quad that is a version number, ``1.2.3.4``, IS masked, while ``1.2.3.4.5`` and ``1.2.3`` are not)
  and IPv6 addresses in full or ``::``-compressed form, also with an embedded IPv4
  (``2001:db8::1``, ``fe80::1ff:fe23:4567:890a``, ``::ffff:192.0.2.1``), validated by
  :mod:`ipaddress`, with at least two non-empty groups (``::`` and ``::1`` are left alone).
* ``[IBAN]``   IBANs: two capital letters, two check digits, 11-30 letters/digits, optionally in
  space-separated groups (``GB82 WEST 1234 5698 7654 32``), passing the ISO 7064 mod-97 check.

What is NOT recognised: names of people, postal addresses, dates of birth, user names, MAC
addresses, passport / licence / tax numbers other than the SSN, phone numbers written without any
separator or ``+``, lowercase IBANs. Years (``1999``), decimals (``3.14``), prices
(``$1,299.99``), short numbers, dates (``2024-01-15``, ``12/31/1999``), ISBNs, times
(``12:30:45``) and arithmetic answers are left as they are. Masking is a safety net for logs and
reports, not an anonymisation guarantee.
"""

from __future__ import annotations

import re

KINDS = ("EMAIL", "IBAN", "CARD", "SSN", "PHONE", "IP")

_RECOGNISERS: list | None = None


def _luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(s: str) -> int:
    d = re.sub(r"[ -]", "", s)
    return len(s) if 13 <= len(d) <= 19 and d[0] in "23456" and _luhn(d) else 0


def _iban_ok(s: str) -> bool:
    s = s.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    n = "".join(str(int(c, 36)) for c in s[4:] + s[:4])
    return int(n) % 97 == 1


def _iban(s: str) -> int:
    """The length of the longest prefix of ``s`` (ending at a group boundary) that is an IBAN."""
    ends = [len(s)] + [m.start() for m in re.finditer(" ", s)][::-1]
    for end in ends:
        if _iban_ok(s[:end]):
            return end
    return 0


def _phone_intl(s: str) -> int:
    return len(s) if 8 <= sum(c.isdigit() for c in s) <= 15 else 0


def _ipv6(s: str) -> int:
    import ipaddress

    if sum(1 for g in s.split(":") if g) < 2:
        return 0
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return 0
    return len(s)


def _recognisers() -> list:
    """(kind, compiled pattern, validator or None) in the order they are applied. A validator
    returns the length of the valid prefix of a match (0: not this kind)."""
    global _RECOGNISERS
    if _RECOGNISERS is None:
        octet = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
        _RECOGNISERS = [
            ("EMAIL", re.compile(r"(?<![\w.%+-])[\w.%+-]+@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,}(?![\w-])"), None),
            ("IBAN", re.compile(r"(?<![\w])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![\w])"), _iban),
            ("CARD", re.compile(r"(?<![\d-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"
                                r"|\d{4}([ -])\d{6}\2\d{4,5})(?![\d]|-\d)"), _card),
            ("SSN", re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d]|-\d)"), None),
            ("PHONE", re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\)[ .-]?\d{1,8}|[ .-]\d{1,8})(?:[ .-]\d{1,8})*"
                                 r"(?![\w]|[.-]\d)|(?<![\w+])\+\d{8,15}(?!\w)"), _phone_intl),
            ("PHONE", re.compile(r"(?<![\w+.-])(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\w]|[.-]\d)"),
             None),
            ("IP", re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|" + octet + r"(?:\." + octet +
                              r"){3})?(?![\w:]|\.\d)"), _ipv6),
            ("IP", re.compile(r"(?<![\w.])" + octet + r"(?:\." + octet + r"){3}(?![\w]|\.\d)"), None),
        ]
    return _RECOGNISERS


def _apply(text: str, kind: str, pattern, validate, counts: dict) -> str:
    out, pos, last = [], 0, 0
    while True:
        m = pattern.search(text, pos)
        if m is None:
            break
        n = len(m.group(0)) if validate is None else validate(m.group(0))
        if n:
            out += [text[last:m.start()], f"[{kind}]"]
            counts[kind] += 1
            last = pos = m.start() + n
        else:  # not this kind here: a match may still start further on (overlapping candidates)
            pos = m.start() + 1
    out.append(text[last:])
    return "".join(out)


def _scan(text: str) -> tuple[str, dict]:
    counts = {k: 0 for k in KINDS}
    for kind, pattern, validate in _recognisers():
        text = _apply(text, kind, pattern, validate, counts)
    return text, counts


def mask_text(text: str) -> str:
    """``text`` with every recognised item replaced by ``[EMAIL]``, ``[PHONE]``, ``[SSN]``,
    ``[CARD]``, ``[IP]`` or ``[IBAN]`` (see the module docstring for what is and is not recognised)."""
    return _scan(text)[0]


def count(text: str) -> dict:
    """How many items of each kind ``text`` holds: ``{"EMAIL": n, "IBAN": n, "CARD": n, "SSN": n,
    "PHONE": n, "IP": n}`` (every kind, zeros included)."""
    return _scan(text)[1]


def mask(obj):
    """A new object like ``obj`` with every string in it masked (:func:`mask_text`), recursing into
    dicts (values only: keys are left alone), lists and tuples; numbers, None, booleans and other
    objects are returned as they are."""
    if isinstance(obj, str):
        return mask_text(obj)
    if isinstance(obj, dict):
        return {k: mask(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask(v) for v in obj]
    if isinstance(obj, tuple):
        return type(obj)(*(mask(v) for v in obj)) if hasattr(obj, "_fields") else tuple(mask(v) for v in obj)
    return obj
