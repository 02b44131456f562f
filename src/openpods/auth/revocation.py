"""Token revocation, checked on every verified token (API tokens and pod login cookies).

- A per-user cutoff (``token_cutoffs``): tokens of the user issued before it are refused. A password change,
  ``openpods users revoke`` and ``POST /v3/oauth2/logout?all=true`` set it.
- Single token ids (``used_tokens``): ``POST /v3/oauth2/logout`` revokes the presented token; one-time login
  codes are recorded there when used, so a code works once across every API process.

:func:`is_revoked` is the one check; it costs two primary-key lookups, so a per-request cache of verified
tokens may call it once per request.
"""

from __future__ import annotations

import time

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from openpods.auth.tokens import Identity
from openpods.store.tables import TokenCutoff, UsedToken

KIND_REVOKED = "revoked"
KIND_CODE = "code"


def now_ms() -> int:
    return int(time.time() * 1000)


def is_revoked(s: Session, identity: Identity) -> bool:
    """True when the token behind ``identity`` was revoked: by its id, or by a cutoff of its user that is
    later than its issue time (a token without an issue time counts as issued at 0 then)."""
    if identity.jti:
        used = s.get(UsedToken, identity.jti)
        if used is not None and used.kind == KIND_REVOKED:
            return True
    cutoff = s.get(TokenCutoff, (identity.tenant_id, identity.username))
    return cutoff is not None and (identity.issued_at_ms or 0) < cutoff.not_before_ms


def revoke_user_tokens(s: Session, tenant_id: str, username: str, at_ms: int | None = None) -> int:
    """Refuse every token of the user issued before ``at_ms`` (default: now); returns the cutoff."""
    at = at_ms if at_ms is not None else now_ms()
    row = s.get(TokenCutoff, (tenant_id, username))
    if row is None:
        s.add(TokenCutoff(tenant_id=tenant_id, username=username, not_before_ms=at))
    else:
        row.not_before_ms = max(row.not_before_ms, at)
    return at


def revoke_token(s: Session, jti: str, expires_at: int | None) -> None:
    """Refuse one token from now on (until it expires anyway)."""
    _purge(s)
    row = s.get(UsedToken, jti)
    if row is None:
        s.add(UsedToken(jti=jti, kind=KIND_REVOKED, expires_at=int(expires_at or time.time() + 366 * 86400)))
    else:
        row.kind = KIND_REVOKED


def consume_once(s: Session, jti: str, expires_at: int) -> bool:
    """Record a one-time code as used; False if it was used before (by any process)."""
    _purge(s)
    try:
        with s.begin_nested():
            s.add(UsedToken(jti=jti, kind=KIND_CODE, expires_at=int(expires_at)))
    except IntegrityError:
        return False
    return True


def _purge(s: Session) -> None:
    # Expired entries refuse nothing any more (the tokens themselves are expired).
    s.execute(delete(UsedToken).where(UsedToken.expires_at < int(time.time()) - 60))
