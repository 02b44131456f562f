"""A bounded cache of verified tokens, keyed by the raw token, so that a request does not pay for signature
verification and the site-admin lookup again (both cost more than the rest of a ``GET /v3/pods/<id>``).

An entry lives at most ``ttl`` seconds and never past the token's ``exp``. Whatever
:meth:`openpods.auth.tokens.TokenService.verify` checks (signature, expiry, tenant, the site-admin flag, and
any revocation check added there) is therefore re-checked at least every ``ttl`` seconds per token: a revoked
token or a withdrawn admin grant takes effect within ``ttl`` in every process. In the process where the change
is made, :meth:`forget` / :meth:`clear` make it take effect at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import jwt
from cachetools import TLRUCache

from openpods.auth.tokens import Identity


class VerifiedTokenCache:
    def __init__(self, ttl_sec: float = 5.0, maxsize: int = 10_000,
                 timer: Callable[[], float] = time.time) -> None:
        self.ttl_sec = ttl_sec
        # The timer is wall-clock time because a token's exp is too; value = (identity, expires_at).
        self._cache: TLRUCache[str, tuple[Identity, float]] = TLRUCache(
            maxsize=maxsize, ttu=lambda _key, value, _now: value[1], timer=timer)
        self._timer = timer
        self._lock = threading.Lock()  # cachetools caches are not thread-safe (sync endpoints run in threads)

    def get(self, token: str) -> Identity | None:
        if self.ttl_sec <= 0:
            return None
        with self._lock:
            entry = self._cache.get(token)
        return entry[0] if entry is not None else None

    def put(self, token: str, identity: Identity) -> None:
        """Keep ``identity`` for a token that has *just* been verified."""
        if self.ttl_sec <= 0:
            return
        expires_at = self._timer() + self.ttl_sec
        exp = _unverified_exp(token)
        if exp is not None:
            expires_at = min(expires_at, exp)
        with self._lock:
            self._cache[token] = (identity, expires_at)

    def lookup(self, token: str, verify: Callable[[str], Identity]) -> Identity:
        """The cached identity of ``token``, or ``verify(token)`` (whose errors propagate, never cached)."""
        identity = self.get(token)
        if identity is None:
            identity = verify(token)
            self.put(token, identity)
        return identity

    def forget(self, tenant_id: str, username: str) -> None:
        """Drop every entry of one user (their tokens were revoked, or their site-admin flag changed)."""
        with self._lock:
            for key in [k for k, (ident, _) in self._cache.items()
                        if ident.tenant_id == tenant_id and ident.username == username]:
                self._cache.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __len__(self) -> int:
        with self._lock:
            self._cache.expire()
            return len(self._cache)


def _unverified_exp(token: str) -> float | None:
    """The ``exp`` of a token that was verified a moment ago (so its signature is already known good)."""
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) else None
