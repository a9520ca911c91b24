from collections import Counter

import pytest

from distillery.curation import find_pii, scrub
from distillery.curation.pii import iban_valid, luhn_valid


@pytest.mark.parametrize("text, expected", [
    ("mail me at jane.doe+bank@example.co.uk please", "mail me at <EMAIL> please"),
    ("my card 4111 1111 1111 1111 was declined", "my card <CARD> was declined"),
    ("card 4111-1111-1111-1111", "card <CARD>"),
    ("IBAN DE89 3704 0044 0532 0130 00 for the transfer", "IBAN <IBAN> for the transfer"),
    ("iban GB82WEST12345698765432", "iban <IBAN>"),
    ("call +44 20 7946 0958 or (212) 555-0123", "call <PHONE> or <PHONE>"),
    ("SSN 123-45-6789", "SSN <SSN>"),
    ("login from 192.168.10.254 failed", "login from <IP> failed"),
    ("v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "v6 <IP>"),
])
def test_pii_is_replaced_by_typed_placeholders(text, expected):
    assert scrub(text) == expected


@pytest.mark.parametrize("text", [
    "order #48213 for $129.99 on 2024-03-05",
    "card 4111 1111 1111 1112 fails Luhn",       # not a valid card number
    "version 10.2.300.4",                         # not an IPv4 address
    "I was charged twice, can you refund 25.00?",
    "transfer reference 12345",
])
def test_lookalikes_are_left_alone(text):
    assert scrub(text) == text and find_pii(text) == []


def test_counts_by_type():
    counts = Counter()
    scrub("a@b.io, c@d.io and 4111111111111111", counts)
    assert counts == {"EMAIL": 2, "CARD": 1}


def test_checksums():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89370400440532013000") and not iban_valid("DE89370400440532013001")
