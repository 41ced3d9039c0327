"""Mask secrets before anything is logged, stored in the ledger, written to a proof or an evidence card.

Three layers, because no single one is enough:
- values of secret-looking KEYS in dicts (``api_key``, ``RUNPOD_API_KEY``, ``clientSecret``, ...) and
  in ``{"key": NAME, "value": ...}`` pairs (RunPod env lists, AWS tags) become ``***``;
- values registered with :func:`register_secret` (the API key actually in use) are masked wherever
  they occur in any string, e.g. inside an error message or a pasted GraphQL query;
- text patterns: PEM private key blocks, ``Bearer``/``Basic`` credentials, ``name=value`` /
  ``"name": "value"`` pairs with a secret-looking name, URL passwords, well-known token prefixes.

Everything here is pure and idempotent: ``redact(redact(x)) == redact(x)``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"

# Shorter registered values are ignored: masking every "ab" in every log would destroy the text,
# and real credentials (API keys, client secrets) are far longer.
MIN_SECRET_LEN = 4

_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_sorted: tuple[str, ...] = ()  # longest first, so a secret containing another is masked whole

# Exact key names (after normalisation to snake_case) that always hold a secret.
_SECRET_KEYS = frozenset(
    {
        "api_key",
        "apikey",
        "x_api_key",
        "secret",
        "client_secret",
        "secret_key",
        "secret_access_key",
        "aws_secret_access_key",
        "aws_access_key_id",
        "access_key_id",
        "aws_session_token",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "auth_token",
        "session_token",
        "password",
        "passwd",
        "passphrase",
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "private_key",
        "ssh_private_key",
        "runpod_api_key",
        "datacrunch_client_secret",
        "verda_client_secret",
        "hf_token",
        "wandb_api_key",
        "credentials",
    }
)
# Any snake_case component sequence like these marks a secret key ("my_db_password", "runpod_api_key").
# "token" must be a whole component, so "tokens_per_s" or "max_new_tokens" stay readable.
_SECRET_KEY_RE = re.compile(
    r"(?:^|_)(?:api_?key|secret|password|passwd|passphrase|private_?key|token|authorization|credentials?)(?:_|$)"
)
# Names that look secret but are not: keep them visible (evidence needs hashes and counts).
_NOT_SECRET_KEYS = frozenset({"token_count", "tokens", "num_tokens", "secret_name", "secrets_manager_arn"})

_CAMEL_RE = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def normalise_key(name: str) -> str:
    """``clientSecret`` -> ``client_secret``, ``X-Api-Key`` -> ``x_api_key``, ``AWS_KEY`` -> ``aws_key``."""
    snake = _CAMEL_RE.sub("_", name.strip())
    return re.sub(r"[^a-z0-9]+", "_", snake.lower()).strip("_")


def is_secret_key(name: Any) -> bool:
    if not isinstance(name, str) or not name:
        return False
    key = normalise_key(name)
    if key in _NOT_SECRET_KEYS:
        return False
    return key in _SECRET_KEYS or bool(_SECRET_KEY_RE.search(key))


def register_secret(value: str) -> None:
    """Remember a secret value so that it is masked wherever it appears in text."""
    global _secrets_sorted
    if not isinstance(value, str):
        return
    forms = {value, value.strip()}
    # The same secret often shows up URL-encoded (query strings, form bodies of an OAuth token call).
    forms |= {quote(value, safe=""), quote_plus(value, safe="")}
    forms = {f for f in forms if len(f) >= MIN_SECRET_LEN and f != MASK}
    if not forms:
        return
    with _lock:
        _secrets.update(forms)
        _secrets_sorted = tuple(sorted(_secrets, key=len, reverse=True))


def register_secrets_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Register the values of secret-looking environment variables; returns their names (not values)."""
    env = os.environ if environ is None else environ
    names = [k for k, v in env.items() if v and is_secret_key(k)]
    for name in names:
        register_secret(env[name])
    return sorted(names)


def clear_secrets() -> None:
    """Forget every registered secret (tests; a long-lived process after rotating a key)."""
    global _secrets_sorted
    with _lock:
        _secrets.clear()
        _secrets_sorted = ()


# --- text patterns ---------------------------------------------------------------------------------

_PEM_RE = re.compile(
    r"-----BEGIN (?P<kind>[A-Z0-9 ]*?)PRIVATE KEY-----.*?(?:-----END (?P=kind)PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
# "Bearer <token>": capitalised is the HTTP scheme; lowercase only with a long token ("the bearer of").
_BEARER_RE = re.compile(
    r"\b(?P<scheme>Bearer|BEARER)\s+(?P<tok>[A-Za-z0-9\-._~+/]+=*)|"
    r"\b(?P<scheme2>bearer)\s+(?P<tok2>[A-Za-z0-9\-._~+/]{16,}=*)"
)
_BASIC_RE = re.compile(r"\b(?P<scheme>Basic)\s+(?P<tok>[A-Za-z0-9+/]{8,}={0,2})")
# name=value, name: value, "name": "value", --name=value; the name decides (see is_secret_key).
_KV_RE = re.compile(
    r"""(?P<key>[A-Za-z_][A-Za-z0-9_.\-]*)(?P<sep>["']?[ \t]*[:=][ \t]*)"""
    r"""(?:(?P<q>["'])(?P<qval>(?:\\.|(?!(?P=q))[^\\\n])*)(?P=q)"""
    r"""|(?P<scheme>(?:Bearer|Basic|Token|Digest)[ \t]+)?(?P<val>[^\s"',;&}\])]+))"""
)
# --api-key VALUE (a flag followed by a space)
_FLAG_RE = re.compile(r"(?<![\w-])(?P<flag>--?[A-Za-z][A-Za-z0-9_\-]*)(?P<sp>[ \t]+)(?P<val>[^\s\-][^\s]*)")
_URL_PASSWORD_RE = re.compile(r"(?P<pre>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]+:)(?P<pw>[^@/\s]+)(?=@)")
# Well-known credential shapes that can appear with no key name next to them.
_TOKEN_SHAPES_RE = re.compile(
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\brpa_[A-Za-z0-9]{20,}\b"  # RunPod API key
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}\b"  # GitHub token
    r"|\bhf_[A-Za-z0-9]{30,}\b"  # Hugging Face token
    r"|\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"  # JWT
)


def _pem_sub(m: re.Match[str]) -> str:
    kind = m.group("kind")
    return f"-----BEGIN {kind}PRIVATE KEY-----{MASK}-----END {kind}PRIVATE KEY-----"


def _bearer_sub(m: re.Match[str]) -> str:
    return f"{m.group('scheme') or m.group('scheme2')} {MASK}"


def _kv_sub(m: re.Match[str]) -> str:
    if not is_secret_key(m.group("key")):
        return m.group(0)
    q = m.group("q")
    if q is not None:
        if m.group("qval") == "":
            return m.group(0)  # an empty value tells the reader "not set"; nothing to hide
        return f"{m.group('key')}{m.group('sep')}{q}{MASK}{q}"
    if m.group("scheme") is None and m.group("val") in ("null", "None", "true", "false", MASK):
        return m.group(0)
    return f"{m.group('key')}{m.group('sep')}{m.group('scheme') or ''}{MASK}"


def _flag_sub(m: re.Match[str]) -> str:
    if not is_secret_key(m.group("flag").lstrip("-")):
        return m.group(0)
    return f"{m.group('flag')}{m.group('sp')}{MASK}"


def redact_text(text: str) -> str:
    """Mask registered secrets and secret-looking patterns inside a string."""
    if not isinstance(text, str) or not text:
        return text
    out = text
    for secret in _secrets_sorted:  # a tuple snapshot: safe against a concurrent register_secret
        if secret in out:
            out = out.replace(secret, MASK)
    if "PRIVATE KEY-----" in out:
        out = _PEM_RE.sub(_pem_sub, out)
    out = _BEARER_RE.sub(_bearer_sub, out)
    out = _BASIC_RE.sub(lambda m: f"{m.group('scheme')} {MASK}", out)
    out = _KV_RE.sub(_kv_sub, out)
    out = _FLAG_RE.sub(_flag_sub, out)
    out = _URL_PASSWORD_RE.sub(lambda m: m.group("pre") + MASK, out)
    out = _TOKEN_SHAPES_RE.sub(MASK, out)
    return out


# --- structures ------------------------------------------------------------------------------------


def _mask_value(value: Any) -> Any:
    # None / "" / booleans say "not set" or "set": they reveal nothing and help the reader.
    if value is None or value == "" or isinstance(value, bool):
        return value
    return MASK


def _pair_name(d: Mapping[Any, Any]) -> str | None:
    """Name of a {"key"/"name": NAME, "value": ...} pair (RunPod env, AWS tags), if it is one."""
    for k in ("key", "Key", "name", "Name"):
        v = d.get(k)
        if isinstance(v, str) and ("value" in d or "Value" in d):
            return v
    return None


def redact(obj: Any) -> Any:
    """Deep copy of ``obj`` with every secret masked (dicts, lists, tuples, sets, strings, dataclasses)."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, Mapping):
        out: dict[Any, Any] = {}
        pair_secret = is_secret_key(_pair_name(obj))
        for k, v in obj.items():
            key = redact_text(k) if isinstance(k, str) else k
            if is_secret_key(k) or (pair_secret and k in ("value", "Value")):
                out[key] = _mask_value(v)
            else:
                out[key] = redact(v)
        return out
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact(v) for v in obj)
    if isinstance(obj, (set, frozenset)):
        return type(obj)(redact(v) for v in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return redact(dataclasses.asdict(obj))
    if isinstance(obj, bytes):
        try:
            return redact_text(obj.decode("utf-8")).encode("utf-8")
        except UnicodeDecodeError:
            return obj
    return obj  # numbers, None, Path, ...: immutable and nothing to hide
