"""The one type that holds a secret: its repr, str and format never show the value."""

from __future__ import annotations

import hashlib
import hmac

MASK = "***"


class Secret:
    """A password, token or API key.

    The value is reachable only through :meth:`reveal`, so a secret that ends up in a log event, an
    f-string, an exception message or a dataclass repr shows as ``***``.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call this only where it goes on the wire."""
        return self._value

    def fingerprint(self) -> str:
        """A short, stable, non-reversible name for the secret, fit for logs."""
        return hashlib.sha256(self._value.encode()).hexdigest()[:8]

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")
