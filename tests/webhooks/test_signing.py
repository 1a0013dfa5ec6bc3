"""Signature schemes: the published vectors pass, tampered ones fail, one test per failure reason."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from connectors import signing
from connectors.signing import REASONS, SignatureError
from tests.conftest import shared_data


def _rsa_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private, public


PRIVATE, PUBLIC = _rsa_pair()
OTHER_PRIVATE, OTHER_PUBLIC = _rsa_pair()
URL = "https://hub.example.com/webhooks/gong/con_1"


def reason(fn, *args, **kwargs) -> str:
    with pytest.raises(SignatureError) as info:
        fn(*args, **kwargs)
    return info.value.reason


# --- the shared vectors ----------------------------------------------------------------------------------


def test_stripe_vectors() -> None:
    spec = json.loads(shared_data("signing_vectors", "stripe_signing_vectors.json").read_text())
    for v in spec["vectors"]:
        payload = shared_data("signing_vectors", v["payload_file"]).read_bytes()
        assert len(payload) == 484
        ts = signing.verify_stripe(payload, v["header"], [v["secret"]], now=v["expected_valid_with_clock"])
        assert ts == v["timestamp"]
        assert reason(signing.verify_stripe, payload, v["header"], [v["secret"]],
                      now=v["expected_invalid_with_clock"]) == "stale_timestamp"
        tampered = payload.replace(b"cus_123", b"cus_124")
        assert reason(signing.verify_stripe, tampered, v["header"], [v["secret"]],
                      now=v["expected_valid_with_clock"]) == "signature_mismatch"
        assert reason(signing.verify_stripe, payload, v["header"], ["not_the_secret"],
                      now=v["expected_valid_with_clock"]) == "signature_mismatch"
    for header in spec["malformed_headers_expected_rejected"]:
        assert reason(signing.verify_stripe, payload, header, ["webhook_secret"], now=1533204620) in (
            "malformed_signature", "missing_signature",
        )


def test_stripe_parse_only_example_is_parsed_but_does_not_verify() -> None:
    spec = json.loads(shared_data("signing_vectors", "stripe_signing_vectors.json").read_text())
    for ex in spec["parse_only_examples"]:
        ts = int(ex["header"].split(",")[0][2:])
        assert reason(signing.verify_stripe, b"{}", ex["header"], ["whsec_x"], now=ts) == "signature_mismatch"


def test_slack_vectors() -> None:
    spec = json.loads(shared_data("signing_vectors", "slack_signing_vectors.json").read_text())
    for v in spec["vectors"]:
        body = v["raw_body"].encode()
        ts, sig = v["headers"]["X-Slack-Request-Timestamp"], v["headers"]["X-Slack-Signature"]
        clock = int(ts)
        assert signing.verify_slack(body, ts, sig, [v["signing_secret"]], now=clock) == clock
        assert signing.sign_slack(body, v["signing_secret"], clock) == sig
        assert reason(signing.verify_slack, body + b"x", ts, sig, [v["signing_secret"]], now=clock) == (
            "signature_mismatch"
        )
        assert reason(signing.verify_slack, body, ts, sig, [v["signing_secret"]], now=clock + 301) == (
            "stale_timestamp"
        )
        assert reason(signing.verify_slack, body, ts, sig, [v["signing_secret"]]) == "stale_timestamp"  # 2018


def test_hubspot_vectors() -> None:
    spec = json.loads(shared_data("signing_vectors", "hubspot_signature_vectors.json").read_text())
    for v in spec["vectors"]:
        body = v["raw_body"].encode()
        method, uri, ts = v.get("http_method", "POST"), v.get("uri", ""), v.get("timestamp", "")
        assert signing.hubspot_signature(v["version"], v["client_secret"], body, method, uri, ts) == v["expected"]
        if v["version"] == "v3":
            headers = {"x-hubspot-signature-v3": v["expected"], "x-hubspot-request-timestamp": ts}
            clock = int(ts) / 1000
        else:
            headers = {"x-hubspot-signature": v["expected"], "x-hubspot-signature-version": v["version"]}
            clock = None
        assert signing.verify_hubspot(body, headers, method, uri, [v["client_secret"]], now=clock) == v["version"]
        assert reason(signing.verify_hubspot, body + b" ", headers, method, uri, [v["client_secret"]],
                      now=clock) == "signature_mismatch"


# --- several secrets, both directions, round trips ---------------------------------------------------------


def test_any_of_several_secrets_verifies_during_rotation() -> None:
    body, now = b'{"id":"evt_1"}', 1_700_000_000
    header = signing.sign_stripe(body, "whsec_old", now)
    assert signing.verify_stripe(body, header, ["whsec_new", "whsec_old"], now=now) == now
    both = header + "," + signing.sign_stripe(body, "whsec_new", now).split(",")[1]
    assert signing.verify_stripe(body, both, ["whsec_new"], now=now) == now
    assert reason(signing.verify_stripe, body, header, ["whsec_new", "whsec_other"], now=now) == (
        "signature_mismatch"
    )


def test_stripe_tolerance_applies_in_both_directions() -> None:
    body, ts = b"{}", 1_700_000_000
    header = signing.sign_stripe(body, "s", ts)
    assert signing.verify_stripe(body, header, ["s"], now=ts + 300) == ts
    assert signing.verify_stripe(body, header, ["s"], now=ts - 300) == ts
    assert reason(signing.verify_stripe, body, header, ["s"], now=ts + 301) == "stale_timestamp"
    assert reason(signing.verify_stripe, body, header, ["s"], now=ts - 301) == "future_timestamp"


def test_docusign_any_header_any_key() -> None:
    body = b"<DocuSignEnvelopeInformation/>"
    sigs = [signing.sign_docusign(body, "key-a"), signing.sign_docusign(body, "key-b")]
    signing.verify_docusign(body, sigs, ["key-b"])
    signing.verify_docusign(body, sigs[:1], ["key-z", "key-a"])
    headers = {"x-docusign-signature-1": sigs[0], "x-docusign-signature-2": sigs[1], "x-docusign-signature-x": "n"}
    assert signing.docusign_signatures(headers) == sigs
    assert reason(signing.verify_docusign, body + b" ", sigs, ["key-a", "key-b"]) == "signature_mismatch"


def test_gong_jwt_round_trip_and_key_rotation() -> None:
    body, now = b'{"callData":{}}', 1_700_000_000
    token = signing.sign_gong_jwt(body, PRIVATE, URL, now + 60)
    claims = signing.verify_gong_jwt(body, f"Bearer {token}", [OTHER_PUBLIC, PUBLIC], URL, now=now)
    assert claims["webhook_url"] == URL
    assert signing.verify_gong_jwt(body, token, [PUBLIC], URL + "/", now=now)  # bare token, trailing slash


def test_gong_body_hash_accepts_base64_encoding() -> None:
    body, now = b"{}", 1_700_000_000
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    token = jwt.encode({"webhook_url": URL, "body_sha256": digest, "exp": now + 5}, PRIVATE, algorithm="RS256")
    signing.verify_gong_jwt(body, token, [PUBLIC], URL, now=now)


def test_generic_standard_webhooks_round_trip_with_whsec_key() -> None:
    body, now = b'{"type":"contract.signed"}', 1_700_000_000
    secret = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
    sig = signing.sign_generic(body, secret, "msg_1", now)
    assert signing.verify_generic(body, "msg_1", str(now), f"v1,bogus= {sig}", ["other", secret], now=now) == now
    assert reason(signing.verify_generic, body, "msg_2", str(now), sig, [secret], now=now) == "signature_mismatch"


def test_graph_client_state_each_notification() -> None:
    notes = [{"clientState": "s2"}, {"clientState": "s1"}]
    signing.verify_graph_client_state(notes, ["s1", "s2"])
    assert reason(signing.verify_graph_client_state, notes, ["s1"]) == "client_state_mismatch"


# --- one test per failure reason -----------------------------------------------------------------------------


def test_reason_no_secret() -> None:
    assert reason(signing.verify_stripe, b"{}", "t=1,v1=00", [], now=1) == "no_secret"
    assert reason(signing.verify_slack, b"{}", "1", "v0=00", ["", ""], now=1) == "no_secret"


def test_reason_missing_signature() -> None:
    assert reason(signing.verify_stripe, b"{}", None, ["s"]) == "missing_signature"
    assert reason(signing.verify_docusign, b"{}", [], ["s"]) == "missing_signature"
    assert reason(signing.verify_token, None, ["t"]) == "missing_signature"


def test_reason_malformed_signature() -> None:
    assert reason(signing.verify_stripe, b"{}", "t=abc,v1=00", ["s"]) == "malformed_signature"
    assert reason(signing.verify_stripe, b"{}", "t=1,v1=zz", ["s"]) == "malformed_signature"
    assert reason(signing.verify_slack, b"{}", "1", "v1=00", ["s"], now=1) == "malformed_signature"
    assert reason(signing.verify_docusign, b"{}", ["***"], ["s"]) == "malformed_signature"


def test_reason_missing_timestamp() -> None:
    assert reason(signing.verify_slack, b"{}", None, "v0=00", ["s"]) == "missing_timestamp"
    assert reason(signing.verify_generic, b"{}", "msg", "", "v1,AA==", ["s"]) == "missing_timestamp"


def test_reason_malformed_timestamp() -> None:
    assert reason(signing.verify_slack, b"{}", "yesterday", "v0=00", ["s"]) == "malformed_timestamp"


def test_reason_stale_timestamp() -> None:
    now = 1_700_000_000
    sig = signing.sign_slack(b"{}", "s", now - 301)
    assert reason(signing.verify_slack, b"{}", str(now - 301), sig, ["s"], now=now) == "stale_timestamp"


def test_reason_future_timestamp() -> None:
    now = 1_700_000_000
    sig = signing.sign_generic(b"{}", "s", "m", now + 301)
    assert reason(signing.verify_generic, b"{}", "m", str(now + 301), sig, ["s"], now=now) == "future_timestamp"


def test_reason_signature_mismatch() -> None:
    now = int(time.time())
    header = signing.sign_stripe(b"{}", "right", now)
    assert reason(signing.verify_stripe, b"{}", header, ["wrong"]) == "signature_mismatch"


def test_reason_token_mismatch() -> None:
    signing.verify_token("Bearer t-new", ["t-new", "t-old"])
    assert reason(signing.verify_token, "Bearer nope", ["t-new", "t-old"]) == "token_mismatch"


def test_reason_jwt_invalid() -> None:
    body, now = b"{}", 1_700_000_000
    forged = signing.sign_gong_jwt(body, OTHER_PRIVATE, URL, now + 60)
    assert reason(signing.verify_gong_jwt, body, forged, [PUBLIC], URL, now=now) == "jwt_invalid"
    assert reason(signing.verify_gong_jwt, body, "not.a.jwt", [PUBLIC], URL, now=now) == "jwt_invalid"
    no_exp = jwt.encode({"webhook_url": URL, "body_sha256": "x"}, PRIVATE, algorithm="RS256")
    assert reason(signing.verify_gong_jwt, body, no_exp, [PUBLIC], URL, now=now) == "jwt_invalid"
    hs = jwt.encode({"webhook_url": URL, "exp": now + 9}, PUBLIC.encode()[:32], algorithm="HS256")
    assert reason(signing.verify_gong_jwt, body, hs, [PUBLIC], URL, now=now) == "jwt_invalid"


def test_reason_jwt_expired() -> None:
    body, now = b"{}", 1_700_000_000
    token = signing.sign_gong_jwt(body, PRIVATE, URL, now)
    assert reason(signing.verify_gong_jwt, body, token, [PUBLIC], URL, now=now) == "jwt_expired"


def test_reason_body_hash_mismatch() -> None:
    now = 1_700_000_000
    token = signing.sign_gong_jwt(b'{"a":1}', PRIVATE, URL, now + 60)
    assert reason(signing.verify_gong_jwt, b'{"a":2}', token, [PUBLIC], URL, now=now) == "body_hash_mismatch"


def test_reason_webhook_url_mismatch() -> None:
    now = 1_700_000_000
    token = signing.sign_gong_jwt(b"{}", PRIVATE, "https://evil.example.com/hook", now + 60)
    assert reason(signing.verify_gong_jwt, b"{}", token, [PUBLIC], URL, now=now) == "webhook_url_mismatch"


def test_reason_client_state_mismatch() -> None:
    assert reason(signing.verify_graph_client_state, [{"clientState": "x"}], ["y"]) == "client_state_mismatch"


def test_every_reason_has_a_test_above() -> None:
    tested = {name.removeprefix("test_reason_") for name in globals() if name.startswith("test_reason_")}
    assert tested == set(REASONS)


def test_unknown_reason_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        SignatureError("because")
