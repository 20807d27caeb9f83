"""Clocks of the real-time loop: ``RealClock`` for the robot (precise waits), ``FakeClock`` for tests
(simulated time: ``sleep_until`` jumps, ``advance`` adds)."""
from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """What the loop needs of a clock: the time, and a wait until a deadline."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""

    def sleep_until(self, deadline: float) -> None:
        """Return at ``deadline`` (or at once if it has passed)."""


class RealClock:
    """``perf_counter`` with precise waits: ``time.sleep`` for all but the last ``spin_s`` (the OS
    wakes a sleeping thread late by up to a scheduler slice), then a busy wait on
    ``perf_counter`` for the rest. The spin costs up to ``spin_s`` of CPU per tick."""

    def __init__(self, spin_s: float = 0.001):
        if spin_s < 0:
            raise ValueError(f"spin_s must be >= 0, got {spin_s}")
        self.spin_s = float(spin_s)

    def now(self) -> float:
        return time.perf_counter()

    def sleep_until(self, deadline: float) -> None:
        remaining = deadline - time.perf_counter()
        if remaining > self.spin_s:
            time.sleep(remaining - self.spin_s)
        while time.perf_counter() < deadline:
            pass


class FakeClock:
    """Simulated time for tests: ``sleep_until`` jumps forward, ``advance`` adds time (e.g. a fake
    observation read or a fake inference that "takes" some seconds)."""

    def __init__(self, start: float = 0.0):
        self.t = float(start)

    def now(self) -> float:
        return self.t

    def sleep_until(self, deadline: float) -> None:
        self.t = max(self.t, float(deadline))

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"cannot advance a clock by {seconds} s")
        self.t += float(seconds)
