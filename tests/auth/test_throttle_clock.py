"""Login throttling under parallel good logins: attempts that read the clock a moment apart must not take each
other's timestamps for a delay (CI saw three parallel logins of one user answered "try again in 1 seconds")."""

from __future__ import annotations

from pathlib import Path

import pytest

from openpods.auth import throttle
from openpods.auth.throttle import LoginThrottler, Throttled, ThrottlePolicy
from openpods.store.db import make_engine, make_sessionmaker, upgrade


@pytest.fixture
def throttler(tmp_path: Path) -> LoginThrottler:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    upgrade(engine)
    return LoginThrottler(make_sessionmaker(engine), ThrottlePolicy(user_free=5, ip_free=20))


def test_an_earlier_clock_reading_is_not_delayed_by_a_free_attempt(throttler: LoginThrottler,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.5]
    monkeypatch.setattr(throttle.time, "time", lambda: clock[0])
    throttler.attempt("default", "admin", "127.0.0.1")  # a parallel login that read the clock later
    clock[0] = 1000.0  # this one read it a moment earlier
    throttler.attempt("default", "admin", "127.0.0.1")  # free attempts: no delay, whatever the order
    throttler.succeeded("default", "admin", "127.0.0.1")


def test_failures_past_the_free_ones_are_still_delayed(throttler: LoginThrottler,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [2000.0]
    monkeypatch.setattr(throttle.time, "time", lambda: clock[0])
    for _ in range(5):
        throttler.attempt("default", "mallory", "10.0.0.1")
    with pytest.raises(Throttled) as info:
        throttler.attempt("default", "mallory", "10.0.0.1")
    assert info.value.retry_after >= 1
    clock[0] += 1.5  # past the first delay: one more attempt is allowed
    throttler.attempt("default", "mallory", "10.0.0.1")
