"""Object permissions: READ < USER < ADMIN, stored as ``user:LEVEL`` strings on the wire."""

from __future__ import annotations

from enum import IntEnum


class Level(IntEnum):
    NONE = 0
    READ = 1
    USER = 2
    ADMIN = 3

    @classmethod
    def parse(cls, value: str) -> Level:
        try:
            return cls[value.upper()]
        except KeyError:
            raise ValueError(f"Unknown permission level {value!r}; use READ, USER or ADMIN.") from None


WILDCARD_USER = "*"


def effective_level(grants: dict[str, str], username: str, *, site_admin: bool = False,
                    allow_wildcard: bool = False) -> Level:
    """The caller's level on one object. Site admins hold ADMIN on everything. The wildcard user ``*``
    (templates only) lends its level to every user of the tenant."""
    if site_admin:
        return Level.ADMIN
    level = Level.parse(grants[username]) if username in grants else Level.NONE
    if allow_wildcard and WILDCARD_USER in grants:
        level = max(level, Level.parse(grants[WILDCARD_USER]))
    return level


def render(grants: dict[str, str]) -> list[str]:
    return [f"{user}:{level}" for user, level in sorted(grants.items())]


def would_leave_no_admin(grants: dict[str, str], user: str, new_level: str | None) -> bool:
    """True if setting ``user`` to ``new_level`` (None = removing) leaves the object without an ADMIN."""
    after = dict(grants)
    if new_level is None:
        after.pop(user, None)
    else:
        after[user] = new_level
    return not any(level == "ADMIN" for u, level in after.items() if u != WILDCARD_USER)
