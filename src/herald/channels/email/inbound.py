"""The inbound SMTP listener (`herald inbound-smtp`, aiosmtpd): where bounces (DSNs), complaint
reports (ARF) and mailto unsubscribes arrive. It translates, nothing more: each accepted message
goes to the `deliver` callback with its envelope recipients and raw bytes, and the SMTP answer
is 250 only after the callback returned (its effects are committed: stored before acknowledged,
G5); if the callback fails the sender gets a 451 and retries later, so nothing is lost.

Recipients are limited to the local parts Herald uses (`bounce+<id>`, `unsubscribe+<token>`,
and the configured report addresses such as `abuse`, `fbl`, `postmaster`): anything else is
refused at RCPT with 550, so the listener is never an open relay."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

MAX_MESSAGE_BYTES = 10 * 1024 * 1024
Deliver = Callable[[Sequence[str], bytes], Awaitable[None]]


class InboundHandler:
    def __init__(self, deliver: Deliver, *, domains: Sequence[str] | None = None,
                 report_local_parts: Sequence[str] = ("abuse", "fbl", "postmaster", "bounces", "dmarc")) -> None:
        self.deliver = deliver
        self.domains = {d.lower() for d in domains} if domains else None
        self.report_local_parts = {p.lower() for p in report_local_parts}

    def accepts(self, address: str) -> bool:
        local, _, domain = address.rpartition("@")
        if self.domains is not None and domain.lower() not in self.domains:
            return False
        local = local.lower()
        return local.startswith(("bounce+", "unsubscribe+")) or local in self.report_local_parts

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if not self.accepts(address):
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        data = raw if isinstance(raw, bytes) else str(raw or "").encode()
        try:
            await self.deliver(list(envelope.rcpt_tos), data)
        except Exception:  # our database is down or the like: the sender keeps the message and retries
            return "451 4.3.0 temporarily unable to record this message, try again later"
        return "250 OK recorded"


async def serve(handler: InboundHandler, host: str, port: int, *, hostname: str | None = None) -> asyncio.Server:
    """Start listening; the caller closes the returned server."""
    loop = asyncio.get_running_loop()

    def factory() -> SMTP:
        return SMTP(handler, hostname=hostname, data_size_limit=MAX_MESSAGE_BYTES, enable_SMTPUTF8=True,
                    decode_data=False)

    server: Any = await loop.create_server(factory, host=host, port=port)
    return server  # type: ignore[no-any-return]
