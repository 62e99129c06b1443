"""Job kinds: a name, an async handler and its retry policy. All kinds are registered in
worker/kinds.py; nothing else adds to a registry."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from herald.domain.jobs import Backoff, Outcome


@dataclass(frozen=True, slots=True)
class JobContext:
    job_id: int
    kind: str
    attempt: int
    max_attempts: int


Handler = Callable[[JobContext, dict[str, Any]], Awaitable[Outcome]]


@dataclass(frozen=True, slots=True)
class JobKind:
    name: str
    handler: Handler
    max_attempts: int = 20
    backoff: Backoff = field(default_factory=Backoff)
    timeout_seconds: float = 300.0
    every: timedelta | None = None  # periodic: the engine enqueues one run per interval


class Registry:
    def __init__(self, kinds: list[JobKind] | None = None) -> None:
        self._kinds: dict[str, JobKind] = {}
        for kind in kinds or []:
            self.add(kind)

    def add(self, kind: JobKind) -> None:
        if kind.name in self._kinds:
            raise ValueError(f"job kind {kind.name!r} registered twice")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> JobKind | None:
        return self._kinds.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[JobKind]:
        return iter(self._kinds.values())

    def periodic(self) -> list[JobKind]:
        return [k for k in self._kinds.values() if k.every is not None]
