"""A message's status is a monotone state machine (G6): provider callbacks arrive out of order
and repeated, so a status only ever moves to a higher rank and a repeat changes nothing.

queued -> sending -> sent -> delivered -> bounced / complained
Pipeline end states (G2): sent (delivered to the provider), suppressed (policy refused it, with
the reason), failed (permanently, with the reason) or expired (gave up retrying).
A bounce after "delivered" is real (a later asynchronous bounce), so it ranks higher; a
complaint ranks highest. Opens and clicks are engagement, recorded as events and timestamps,
not statuses.
"""

from __future__ import annotations

from typing import Final, Literal

from herald.domain.delivery import EventKind

MessageStatus = Literal["queued", "sending", "sent", "delivered", "bounced", "complained",
                        "failed", "suppressed", "expired"]

RANK: Final[dict[str, int]] = {
    "queued": 0, "sending": 1, "sent": 2, "delivered": 3,
    "expired": 4, "failed": 4, "suppressed": 4, "bounced": 5, "complained": 6,
}
FINAL_PIPELINE: Final = frozenset({"failed", "suppressed", "expired"})

# The status a provider's event moves a message to (engagement events move nothing).
EVENT_STATUS: Final[dict[EventKind, MessageStatus]] = {
    "sent": "sent",
    "delivered": "delivered",
    "bounced": "bounced",
    "rejected": "failed",
    "complained": "complained",
}


def advances(current: str, new: str) -> bool:
    """True if `new` is a later status than `current` (a repeat or an older one is not)."""
    return RANK[new] > RANK[current]


def status_for_event(current: str, kind: EventKind, permanent: bool | None) -> str | None:
    """The message's next status after an event, or None when it stays where it is.
    A temporary bounce (deferred, or bounced with permanent=False) is not a status change."""
    if kind == "bounced" and permanent is False:
        return None
    new = EVENT_STATUS.get(kind)
    if new is None or not advances(current, new):
        return None
    return new
