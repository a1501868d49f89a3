"""Which property names may hold a secret: their values are never printed or logged."""

from __future__ import annotations

import difflib
import re

# A property whose name holds one of these — or a word within a typo of one — may hold a secret.
_SECRET_MARKERS = (
    "password", "passwd", "secret", "token", "credential", "oauth", "sasl", "key", "pem", "jaas",
)

_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "credentials", "oauthbearer")

_TYPO_RATIO = 0.8

# Named like a secret, but what they hold helps an operator and protects nothing.
_NOT_SECRET = frozenset(
    ("sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.kerberos.service.name",
     "sasl.kerberos.principal")
)


def is_secret(key: str) -> bool:
    """Whether a librdkafka property may hold a secret, so that its value is never printed.

    Names are matched loosely on purpose: a misspelt ``sasl.pasword`` is refused by librdkafka,
    and its value must not appear in the error that says so.
    """
    lowered = key.lower()
    if lowered in _NOT_SECRET:
        return False
    if any(marker in lowered for marker in _SECRET_MARKERS):
        return True
    words = re.split(r"[._\-]+", lowered)
    return any(
        len(word) >= 4 and difflib.SequenceMatcher(None, word, secret).ratio() >= _TYPO_RATIO
        for word in words
        for secret in _SECRET_WORDS
    )
