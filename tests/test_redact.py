"""Secrets never reach a log, the ledger, a proof or an evidence card."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from orchestrator.redact import (
    MASK,
    clear_secrets,
    is_secret_key,
    redact,
    redact_text,
    register_secret,
    register_secrets_from_env,
)

RUNPOD_KEY = "rpa_7QW3XK2LMN8PZ4R6T1YV9BC5DF0GHJ"
DC_SECRET = "dc-s3cr3t/with+chars=="
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACDx4m1cYvVQ7l2n0QK7YQ1pJb0ZkTnYbR8sDPcR6L1aOwAAAJgM3y6XDN8u\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


@pytest.fixture(autouse=True)
def _fresh_registry() -> Iterator[None]:
    clear_secrets()
    yield
    clear_secrets()


@pytest.mark.parametrize(
    "key",
    [
        "api_key",
        "apiKey",
        "APIKEY",
        "x-api-key",
        "secret",
        "clientSecret",
        "token",
        "access_token",
        "password",
        "Authorization",
        "private_key",
        "RUNPOD_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ACCESS_KEY_ID",
        "DATACRUNCH_CLIENT_SECRET",
        "SecretAccessKey",
        "db_password",
    ],
)
def test_secret_keys_are_recognised(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "tokens_per_s",
        "max_new_tokens",
        "sha256",
        "key_name",
        "KeyName",
        "ssh_public_key",
        "loss",
        "id",
        "keys",
    ],
)
def test_ordinary_keys_stay_visible(key: str) -> None:
    assert not is_secret_key(key)


def test_nested_payload_is_masked_and_original_untouched() -> None:
    payload = {
        "run_id": "abc-123",
        "env": {"RUNPOD_API_KEY": RUNPOD_KEY, "PYTHONUNBUFFERED": "1"},
        "auth": {"clientSecret": DC_SECRET, "client_id": "my-client"},
        "pods": [{"id": "p1", "token": "t-0123456789", "metrics": {"tokens_per_s": 1234.5}}],
        "aws": ({"AWS_SECRET_ACCESS_KEY": AWS_SECRET},),
        "password": None,
        "api_key": "",
        "headers": {"Authorization": "Bearer abc.def.ghi"},
    }
    snapshot = json.dumps(payload, default=list)
    out = redact(payload)
    assert json.dumps(payload, default=list) == snapshot  # a deep copy: the input is not mutated
    assert out["env"] == {"RUNPOD_API_KEY": MASK, "PYTHONUNBUFFERED": "1"}
    assert out["auth"] == {"clientSecret": MASK, "client_id": "my-client"}
    assert out["pods"][0]["token"] == MASK
    assert out["pods"][0]["metrics"] == {"tokens_per_s": 1234.5}
    assert out["aws"][0]["AWS_SECRET_ACCESS_KEY"] == MASK
    assert out["password"] is None and out["api_key"] == ""  # "not set" is not a secret
    assert out["headers"]["Authorization"] == MASK
    dumped = json.dumps(out, default=list)
    for secret in (RUNPOD_KEY, DC_SECRET, AWS_SECRET, "t-0123456789", "abc.def.ghi"):
        assert secret not in dumped


def test_key_value_pair_lists_like_runpod_env_and_aws_tags() -> None:
    env = [{"key": "RUNPOD_API_KEY", "value": RUNPOD_KEY}, {"key": "RUN_ID", "value": "abc-123"}]
    tags = [
        {"Key": "gpurun", "Value": "abc-123"},
        {"Key": "DATACRUNCH_CLIENT_SECRET", "Value": "zzz-top-secret"},
    ]
    assert redact(env) == [{"key": "RUNPOD_API_KEY", "value": MASK}, {"key": "RUN_ID", "value": "abc-123"}]
    assert redact(tags)[0] == {"Key": "gpurun", "Value": "abc-123"}
    assert redact(tags)[1]["Value"] == MASK


def test_registered_secret_is_masked_anywhere_in_any_string() -> None:
    register_secret(RUNPOD_KEY)
    register_secret(DC_SECRET)
    msg = f'mutation {{ podFindAndDeployOnDemand(input: {{env: [{{value: "{RUNPOD_KEY}"}}]}}) }}'
    assert RUNPOD_KEY not in redact_text(msg)
    # free text with no key name next to it, inside a list inside a dict
    out = redact({"errors": [f"401 for key {RUNPOD_KEY[:-2]}{RUNPOD_KEY[-2:]} at https://api"]})
    assert RUNPOD_KEY not in out["errors"][0] and MASK in out["errors"][0]
    # the URL-encoded form (an OAuth token form body) is masked too
    body = "grant_type=client_credentials&client_id=me&cs=dc-s3cr3t%2Fwith%2Bchars%3D%3D"
    assert "dc-s3cr3t" not in redact_text(body)


def test_short_or_empty_values_are_not_registered() -> None:
    register_secret("")
    register_secret("ab")
    assert redact_text("abc ab a") == "abc ab a"


def test_register_from_env_names_only_secret_variables() -> None:
    env = {"RUNPOD_API_KEY": RUNPOD_KEY, "HOME": "/root/home-dir", "AWS_SECRET_ACCESS_KEY": AWS_SECRET}
    assert register_secrets_from_env(env) == ["AWS_SECRET_ACCESS_KEY", "RUNPOD_API_KEY"]
    assert (
        redact_text(f"echo {AWS_SECRET} {RUNPOD_KEY} /root/home-dir") == f"echo {MASK} {MASK} /root/home-dir"
    )


def test_pem_blocks_are_masked_including_truncated_and_json_escaped() -> None:
    text = f"writing key\n{PEM}done"
    out = redact_text(text)
    assert "b3BlbnNzaC1rZXkt" not in out
    assert out.startswith(
        "writing key\n-----BEGIN OPENSSH PRIVATE KEY-----***-----END OPENSSH PRIVATE KEY-----"
    )
    assert out.endswith("done")
    truncated = "log: -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA"  # cut off mid-sync
    assert "MIIEow" not in redact_text(truncated)
    as_json = json.dumps({"user_data": PEM})
    assert "QyNTUxOQ" not in redact_text(as_json)


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("Authorization: Bearer xxx", "xxx"),
        ("curl -H 'Authorization: Bearer eyJhbGciOi.payload123.sig456789' https://x", "payload123"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
        ("RUNPOD_API_KEY=abcd1234efgh", "abcd1234efgh"),
        ("export AWS_SECRET_ACCESS_KEY='wJalr XUtn'", "wJalr"),
        ('{"client_secret": "s3cr3t-value", "x": 1}', "s3cr3t-value"),
        ("GET /v1?api_key=q1w2e3r4&page=2", "q1w2e3r4"),
        ("gpurun launch --api-key k9k9k9k9 --max-usd 3", "k9k9k9k9"),
        ("rsync from https://user:hunter22@example.com/x", "hunter22"),
        ("found AKIAIOSFODNN7EXAMPLE in env", "AKIAIOSFODNN7EXAMPLE"),
        ("password: correct horse", "correct"),
    ],
)
def test_text_patterns(text: str, leak: str) -> None:
    out = redact_text(text)
    assert leak not in out
    assert MASK in out


def test_training_lines_are_left_alone() -> None:
    lines = (
        "device: cuda\nparameters: 124.44M\n"
        "step 0050 | loss 3.1120 | lr 6.00e-04 | tok/s 12345 | mfu 41.2% | elapsed 1.6s\n"
        '{"type": "step", "tokens_per_s": 12345.0, "loss": 3.112}\n'
        "checkpoint: checkpoints/ckpt-000100.pt sha256 " + "a" * 64 + "\n"
        "the bearer of this letter, KeyName: gpurun-abc\n"
    )
    assert redact_text(lines) == lines


def test_redaction_is_idempotent() -> None:
    register_secret(RUNPOD_KEY)
    text = f"Authorization: Bearer {RUNPOD_KEY}\n{PEM}api_key={RUNPOD_KEY} token: 'x y z'"
    once = redact_text(text)
    assert redact_text(once) == once
    obj = {"a": [text, {"secret": "s"}]}
    assert redact(redact(obj)) == redact(obj)


def test_dataclasses_and_scalars() -> None:
    @dataclass
    class Creds:
        client_id: str
        client_secret: str

    assert redact(Creds("me", "zzz-secret")) == {"client_id": "me", "client_secret": MASK}
    assert redact(3) == 3 and redact(None) is None and redact(2.5) == 2.5
    assert redact({"password_set": True}) == {"password_set": True}
