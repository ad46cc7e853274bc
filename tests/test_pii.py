"""PII masking: true positives of every kind in several formats, true negatives (years, decimals,
prices, dates, ISBNs, versions, answers, names), counts, and mask() keeping the structure."""

import pytest

from trustedit.pii import KINDS, count, mask, mask_text

POSITIVES = {
    "EMAIL": ["john.doe@example.com", "first.last+tag@mail.example.co.uk", "JOSÉ@exemple.fr", "a_b-c%d@sub-domain.org"],
    "PHONE": ["(555) 123-4567", "(555)123-4567", "555-123-4567", "555.123.4567", "555 123 4567", "1-555-123-4567",
              "+1 555 123 4567", "+1 (555) 123-4567", "+44 20 7946 0958", "+33 1 23 45 67 89", "+49 (0)30 1234567",
              "+442079460958"],
    "SSN": ["123-45-6789", "078-05-1120"],
    "CARD": ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "5555 5555 5555 4444",
             "3782 822463 10005", "378282246310005", "6011111111111117", "3056 930902 5904", "4222222222222"],
    "IP": ["192.168.0.1", "10.0.0.255", "8.8.8.8", "2001:db8::1", "fe80::1ff:fe23:4567:890a", "::ffff:192.0.2.1",
           "2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
    "IBAN": ["GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432", "DE89 3704 0044 0532 0130 00",
             "FR14 2004 1010 0505 0001 3M02 606"],
}

NEGATIVES = [
    "In 1999 the price was $1,299.99 and in 2024 it is €12.50.",
    "pi is 3.14159, e is 2.718, the answer is 42, and 2+2=4; 17 * 23 = 391; 1,234,567 people.",
    "Dates: 2024-01-15, 12/31/1999, 31.12.1999, 15 Jan 2024; times 12:30:45 and 09:15.",
    "ISBN 978-3-16-148410-0, ISBN-10 0-306-40615-2, EAN 9783161484100.",
    "Versions 1.2.3, v2.0.1, 1.2.3.4.5; Python 3.11.4.",
    "Not a card: 4111 1111 1111 1112 (Luhn fails), 1234567890123 (no network starts with 1).",
    "Not an SSN: 000-12-3456, 666-12-3456, 123-00-6789, 123-45-0000, 123-45-67890.",
    "Not a phone: 5551234567, 555-1234, +3 = 5, temperature +12.5 C.",
    "Not an IP: 256.1.1.1, 1.2.3, 999.1.1.1, ::1, std::vector, MAC 00:1A:2B:3C:4D:5E.",
    "Not an IBAN: GB82 WEST 1234 5698 7654 33 (check digits wrong), gb82west12345698765432.",
    "Not an e-mail: user@localhost, @handle, a@b.",
    "Marie Curie met Albert Einstein in Brussels; Barack Obama was born in Honolulu.",
    "Order #20240115, invoice 100000, zip 90210, room 404.",
]


@pytest.mark.parametrize("kind,value", [(k, v) for k, vs in POSITIVES.items() for v in vs])
def test_each_kind_is_masked_in_context(kind, value):
    text = f"Contact: {value}. Thanks"
    assert mask_text(text) == f"Contact: [{kind}]. Thanks"
    assert count(text) == {k: int(k == kind) for k in KINDS}
    assert mask_text(value) == f"[{kind}]"  # alone, at both ends of the string


@pytest.mark.parametrize("text", NEGATIVES)
def test_true_negatives_are_left_alone(text):
    assert mask_text(text) == text
    assert sum(count(text).values()) == 0


def test_version_dotted_quad_is_an_ip():
    # documented: a four-part version number cannot be told apart from an IPv4 address
    assert mask_text("release 1.2.3.4 is out") == "release [IP] is out"


def test_several_kinds_in_one_text_and_counts():
    text = ("Write to ann@example.org or call +44 20 7946 0958 / (555) 123-4567; card 4111 1111 1111 1111, "
            "SSN 123-45-6789, from 192.168.1.20, pay to DE89 3704 0044 0532 0130 00. In 1999, 3.14.")
    assert mask_text(text) == ("Write to [EMAIL] or call [PHONE] / [PHONE]; card [CARD], SSN [SSN], from [IP], "
                               "pay to [IBAN]. In 1999, 3.14.")
    assert count(text) == {"EMAIL": 1, "IBAN": 1, "CARD": 1, "SSN": 1, "PHONE": 2, "IP": 1}


def test_overlapping_candidates_and_neighbours():
    # a year before a card number does not hide the card; a word after an IBAN is not swallowed
    assert mask_text("in 2019 4111 1111 1111 1111 end") == "in 2019 [CARD] end"
    assert mask_text("IBAN GB82 WEST 1234 5698 7654 32 IS VALID") == "IBAN [IBAN] IS VALID"
    assert mask_text("ip=10.1.2.3,port=80") == "ip=[IP],port=80"
    assert mask_text("<a@example.com>") == "<[EMAIL]>"


def test_mask_keeps_structure_and_returns_a_new_object():
    row = {"suite": "sanitation", "question": "Who owns jane@corp.com?", "n": 3, "score": 0.5, "ok": True,
           "none": None, "jane@corp.com": "key untouched", "pre": [{"text": "call 555-123-4567", "score": 0.1}],
           "pair": ("8.8.8.8", 7)}
    out = mask(row)
    assert out == {"suite": "sanitation", "question": "Who owns [EMAIL]?", "n": 3, "score": 0.5, "ok": True,
                   "none": None, "jane@corp.com": "key untouched", "pre": [{"text": "call [PHONE]", "score": 0.1}],
                   "pair": ("[IP]", 7)}
    assert row["question"] == "Who owns jane@corp.com?" and row["pre"][0]["text"] == "call 555-123-4567"  # unchanged
    assert out is not row and out["pre"] is not row["pre"] and out["pre"][0] is not row["pre"][0]
    assert mask(12) == 12 and mask(None) is None and mask(["1999", 3.14]) == ["1999", 3.14]


def test_patterns_are_compiled_at_first_use():
    import importlib

    import trustedit.pii as p

    p = importlib.reload(p)
    assert p._RECOGNISERS is None
    p.mask_text("x")
    assert p._RECOGNISERS is not None and {k for k, _, _ in p._RECOGNISERS} == set(KINDS)
