"""What a job handler may answer, and the retry schedule. Pure rules, no IO."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    AVAILABLE = "available"  # waiting for its due time, or due now
    RUNNING = "running"  # leased by a worker until lease_expires_at
    COMPLETED = "completed"
    DEAD = "dead"  # failed permanently or exhausted its attempts; last_error says why
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class Retry:
    """Returned by a handler: run me again after `after` seconds (e.g. a provider's Retry-After).

    It counts as an attempt: a job that keeps asking ends `dead` after max_attempts.
    """

    after: float
    reason: str = "handler asked to retry"


@dataclass(frozen=True, slots=True)
class Fail:
    """Returned by a handler: this job can never succeed; move it to `dead` now."""

    reason: str


Outcome = Retry | Fail | None


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": attempt n waits in [d/2, d], d = base * 2^(n-1).

    With equal jitter the shortest wait of attempt n+1 equals the longest wait of attempt n,
    so waits never shrink from one attempt to the next, yet workers don't retry in lockstep.
    """

    base: float = 2.0
    cap: float = 3600.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap, self.base * 2.0 ** max(attempt - 1, 0))
        r: float = (rng or random).random()
        return ceiling / 2 + r * ceiling / 2
