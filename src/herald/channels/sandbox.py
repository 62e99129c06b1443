"""The sandbox provider: answers like a real provider by the rules in domain/sandbox.py and
sends nothing. Used for every channel of a workspace in sandbox mode (services pick it; see
services/sandbox.py for the simulated delivery callbacks)."""

from __future__ import annotations

from herald.domain.delivery import Channel, OutboundMessage, SendResult
from herald.domain.sandbox import PROVIDER_KIND, simulate


class SandboxProvider:
    key = PROVIDER_KIND

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    @property
    def channel(self) -> Channel:
        return self._channel

    async def send(self, message: OutboundMessage) -> SendResult:
        simulated = simulate(message.to)
        if simulated.outcome in ("bounced", "rejected"):
            assert simulated.reason is not None
            return SendResult.failed(message.id, simulated.reason, f"sandbox: {simulated.outcome}",
                                     provider_code=f"sandbox-{simulated.outcome}")
        if simulated.outcome == "throttled":
            assert simulated.reason is not None
            return SendResult.retry(message.id, simulated.reason, "sandbox: throttled", provider_code="sandbox-429",
                                    retry_after=simulated.retry_after)
        return SendResult.accepted(message.id, f"sandbox-{message.id}", detail=f"sandbox: {simulated.outcome}")

    async def aclose(self) -> None:
        return None
