"""Sandbox mode (per workspace, settings key "sandbox": true): every send runs the whole pipeline
(policy, render, "sending" committed, the outcome recorded, callbacks applied) but nothing leaves
Herald. The outcome is chosen by the address, so flows and campaigns can be tested end to end:

    address contains            phone ends with   outcome
    "bounce"                    0001              failed, invalid address (the address is suppressed)
    "reject"                    0002              failed, content rejected
    "throttle"                  0003              retried: throttled, Retry-After 60 s
    "delay"                     0004              accepted; "delivered" 5 minutes later
    anything else                                 accepted; "delivered" 5 seconds later

Push subscriptions and inbox contacts follow the same rules on their token / contact id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from herald.domain.delivery import FailureReason

SETTINGS_KEY: Final = "sandbox"
PROVIDER_KIND: Final = "sandbox"

Outcome = Literal["delivered", "delayed", "bounced", "rejected", "throttled"]


@dataclass(frozen=True, slots=True)
class Simulated:
    outcome: Outcome
    reason: FailureReason | None = None
    retry_after: float | None = None
    delivered_after: float | None = None  # seconds after acceptance the "delivered" event comes


_RULES: Final = (
    ("bounce", "0001", Simulated("bounced", FailureReason.INVALID_ADDRESS)),
    ("reject", "0002", Simulated("rejected", FailureReason.CONTENT_REJECTED)),
    ("throttle", "0003", Simulated("throttled", FailureReason.THROTTLED, retry_after=60.0)),
    ("delay", "0004", Simulated("delayed", delivered_after=300.0)),
)
DELIVERED: Final = Simulated("delivered", delivered_after=5.0)


def simulate(address: str) -> Simulated:
    """The outcome the sandbox gives a message to `address`."""
    lowered = address.lower()
    for word, ending, outcome in _RULES:
        if word in lowered or (lowered.startswith("+") and lowered.endswith(ending)):
            return outcome
    return DELIVERED
