"""The CRM callback signature: what a receiver checks, one test per refusal."""

from __future__ import annotations

import pytest

from hub.crm_signing import SignatureError, sign, verify

BODY = b'{"id":"evt_1","type":"stage.changed"}'


def test_a_signed_body_verifies_within_the_window_and_across_rotation() -> None:
    header = sign("new", BODY, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    verify(["old", "new"], BODY, header, now=1_700_000_299)


@pytest.mark.parametrize(
    ("header", "body", "now", "message"),
    [
        (None, BODY, 1_700_000_000, "missing FulQrun-Signature header"),
        ("v1=abc", BODY, 1_700_000_000, "malformed FulQrun-Signature header"),
        (sign("s", BODY, 1_700_000_000), BODY, 1_700_000_301, "timestamp outside the tolerance window"),
        (sign("s", BODY, 1_700_000_000), BODY + b" ", 1_700_000_000, "no signature matches"),
        (sign("other", BODY, 1_700_000_000), BODY, 1_700_000_000, "no signature matches"),
    ],
)
def test_each_refusal_names_its_cause(header: str | None, body: bytes, now: int, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        verify(["s"], body, header, now=now)
