"""Endpoint API keys at rest: Fernet-encrypted with a key derived from the app's secret.

A key is written once and only ever decrypted in the process that calls the endpoint; pages, the API,
logs and exports only learn whether one is set.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.errors import DomainError
from app.settings import get_settings

_INFO = b"redline model editor api keys"


class KeyUnreadable(DomainError):
    """The stored key was encrypted under another secret (REDLINE_SECRET_KEY changed): set it again."""


def _fernet() -> Fernet:
    secret = get_settings().resolved_secret_key().encode()
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)
    return Fernet(base64.urlsafe_b64encode(derived))


def seal(api_key: str) -> str:
    return _fernet().encrypt(api_key.encode()).decode() if api_key else ""


def unseal(sealed: str) -> str:
    if not sealed:
        return ""
    try:
        return _fernet().decrypt(sealed.encode()).decode()
    except InvalidToken:
        raise KeyUnreadable("the editor's API key cannot be decrypted with this secret key: set it again") from None
