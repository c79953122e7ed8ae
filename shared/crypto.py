"""Secrets at rest: API keys are stored as hashes, target credentials encrypted with Fernet."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

from cryptography.fernet import Fernet, InvalidToken

from shared.config import get_settings

API_KEY_PREFIX = "aic_"


def generate_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(api_key: str) -> str:
    # API keys are 256-bit random values, so a plain SHA-256 is enough (no brute force possible);
    # a slow password hash would only make every request slower.
    return hashlib.sha256(api_key.encode()).hexdigest()


def api_key_matches(api_key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_api_key(api_key), stored_hash)


def _fernet() -> Fernet:
    return Fernet(get_settings().secret_key.encode())


def encrypt_json(data: dict) -> str:
    return _fernet().encrypt(json.dumps(data, sort_keys=True).encode()).decode()


def decrypt_json(token: str) -> dict:
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken as exc:  # wrong AIC_SECRET_KEY: say so, never show the ciphertext
        raise RuntimeError(
            "cannot decrypt stored credentials: AIC_SECRET_KEY differs from the key they were "
            "encrypted with"
        ) from exc


def generate_secret_key() -> str:
    return Fernet.generate_key().decode()
