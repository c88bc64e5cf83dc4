"""The clock contract, run against the fake and the real one: a sleep moves `now` forward by at
least what it slept, and a zero sleep returns at once."""
import pytest

from pipeline.core.clock import Clock, SystemClock

from .fakes import FakeClock


@pytest.fixture(params=["fake", "system"])
def clock(request: pytest.FixtureRequest) -> Clock:
    return FakeClock() if request.param == "fake" else SystemClock()


def test_a_sleep_moves_now_forward_by_at_least_the_sleep(clock: Clock) -> None:
    before = clock.now()
    clock.sleep(0.125)   # a binary fraction: exact on the fake clock
    assert clock.now() - before >= 0.125


def test_now_never_goes_back(clock: Clock) -> None:
    seen = [clock.now() for _ in range(100)]
    assert seen == sorted(seen)


def test_the_fake_keeps_every_sleep_and_moves_only_when_slept() -> None:
    fake = FakeClock(start=5.0)
    assert fake.now() == fake.now() == 5.0
    fake.sleep(2.5)
    fake.sleep(0)
    assert (fake.now(), fake.sleeps) == (7.5, [2.5, 0])
