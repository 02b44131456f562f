"""Throttling of password guesses, per (tenant, username) and per client address, shared through the database
by every API process.

Exponential backoff: each attempt counts as a failure *before* the password is checked (so a burst of parallel
guesses is counted in full); after ``free`` failures the next attempt is allowed only after a delay that starts
at ``base`` seconds and doubles with every further failure, up to ``max``. Attempts while delayed are answered
429 (with ``Retry-After``) without checking the password. A successful login resets the user's counter and
takes back its own count from the address (the address is not reset: one valid account must not clear the
address's failures against others). Failures older than ``forget`` seconds are forgotten.

Updates are compare-and-set on the row (``failures`` as version), portable to SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from openpods.config import Settings
from openpods.store.db import transaction
from openpods.store.tables import LoginThrottle


@dataclass(frozen=True)
class ThrottlePolicy:
    user_free: int = 5
    ip_free: int = 20
    base: float = 1.0
    max: float = 900.0
    forget: float = 3600.0
    enabled: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> ThrottlePolicy:
        return cls(user_free=settings.login_throttle_user_free_failures,
                   ip_free=settings.login_throttle_ip_free_failures,
                   base=settings.login_throttle_base_delay_sec, max=settings.login_throttle_max_delay_sec,
                   forget=settings.login_throttle_forget_sec, enabled=settings.login_throttle_enabled)

    def delay(self, failures: int, free: int) -> float:
        """Seconds until the next attempt after ``failures`` counted attempts (``free`` of them undelayed)."""
        if failures < free:
            return 0.0
        return min(self.max, self.base * 2 ** min(failures - free, 60))


class Throttled(Exception):
    """Too many failed logins; ``retry_after`` is whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many failed login attempts; try again in {retry_after} seconds.")
        self.retry_after = retry_after


def user_key(tenant_id: str, username: str) -> str:
    return f"user:{tenant_id}/{username.lower()}"[:255]


def ip_key(address: str | None) -> str:
    return f"ip:{address or 'unknown'}"[:255]


class LoginThrottler:
    def __init__(self, sessions: sessionmaker[Session], policy: ThrottlePolicy) -> None:
        self.sessions = sessions
        self.policy = policy

    def attempt(self, tenant_id: str, username: str, address: str | None) -> None:
        """Count an attempt before the password is checked; raises :class:`Throttled` while delayed."""
        if not self.policy.enabled:
            return
        now = time.time()
        keys = ((user_key(tenant_id, username), self.policy.user_free), (ip_key(address), self.policy.ip_free))
        # Check both first, so an attempt refused for one key is not counted on the other.
        with self.sessions() as s:
            waits = [self._wait(s.get(LoginThrottle, key), now) for key, _ in keys]
        if max(waits) > 0:
            raise Throttled(math.ceil(max(waits)))
        for key, free in keys:
            self._count(key, free, now)
        if random.random() < 0.01:
            self._purge(now)

    def succeeded(self, tenant_id: str, username: str, address: str | None) -> None:
        if not self.policy.enabled:
            return
        with transaction(self.sessions) as s:
            s.execute(delete(LoginThrottle).where(LoginThrottle.key == user_key(tenant_id, username)))
            s.execute(update(LoginThrottle).where(LoginThrottle.key == ip_key(address), LoginThrottle.failures > 0)
                      .values(failures=LoginThrottle.failures - 1))

    def _wait(self, row: LoginThrottle | None, now: float) -> float:
        if row is None or now - row.last_attempt > self.policy.forget:
            return 0.0
        return max(0.0, row.next_allowed - now)

    def _next_allowed(self, now: float, failures: int, free: int) -> float:
        """0 while the attempts are free: a concurrent attempt that read the clock a moment earlier must not take
        the writer's ``now`` for a delay (that refused parallel good logins with "try again in 1 seconds")."""
        delay = self.policy.delay(failures, free)
        return now + delay if delay > 0 else 0.0

    def _count(self, key: str, free: int, now: float) -> None:
        for _ in range(50):
            try:
                with transaction(self.sessions) as s:
                    row = s.get(LoginThrottle, key)
                    if row is None:
                        s.add(LoginThrottle(key=key, failures=1, next_allowed=self._next_allowed(now, 1, free),
                                            last_attempt=now))
                        s.flush()
                        return
                    stale = now - row.last_attempt > self.policy.forget
                    if not stale and row.next_allowed > now:
                        # Another process counted an attempt that started the delay in the meantime.
                        raise Throttled(math.ceil(row.next_allowed - now))
                    failures = 1 if stale else row.failures + 1
                    done = s.execute(
                        update(LoginThrottle)
                        .where(LoginThrottle.key == key, LoginThrottle.failures == row.failures,
                               LoginThrottle.last_attempt == row.last_attempt)
                        .values(failures=failures, next_allowed=self._next_allowed(now, failures, free),
                                last_attempt=now)
                        .execution_options(synchronize_session=False)
                    ).rowcount
                if done:
                    return
            except IntegrityError:
                continue  # another process inserted the row first: count on it
        raise Throttled(1)

    def _purge(self, now: float) -> None:
        with transaction(self.sessions) as s:
            s.execute(delete(LoginThrottle).where(LoginThrottle.last_attempt < now - self.policy.forget))
