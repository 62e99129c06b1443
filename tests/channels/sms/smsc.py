"""Local SMSC peers for the SMPP provider's tests, all on 127.0.0.1:

  * `Smsc`: the `smpp34` package's SMSC (a Rust SMPP 3.4 server, an implementation independent of
    ours): records every submit_sm, answers each with `answer(submit)` (a message id accepts it, an
    int refuses it with that command_status, None holds it unanswered) and pushes deliver_sm.
    smpp34's Python server accepts every bind whatever the password, and does not answer unbind.
  * `RawSmsc`: a hand-written minimal SMSC over asyncio streams for what smpp34 cannot do: check
    the bind's system_id/password/system_type and refuse it, count enquire_link (or ignore them),
    see the unbind.
  * `Proxy`: a TCP relay whose connections a test can cut (the SMSC "dropping" the connection).

Every wait is bounded (`WAIT` seconds) and event-driven, never a sleep."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import smpp34

WAIT = 10.0
HEADER = struct.Struct(">IIII")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Submitted:
    session_id: str
    source_addr: str
    source_addr_ton: int
    source_addr_npi: int
    destination_addr: str
    dest_addr_ton: int
    dest_addr_npi: int
    esm_class: int
    data_coding: int
    registered_delivery: int
    short_message: bytes


Answer = Callable[[Submitted, int], "str | int | None"]   # (submit, its 1-based number) -> answer


def accept_all(_submit: Submitted, number: int) -> str:
    return f"smsc-{number}"


class Watched:
    """State a test waits on: `until(predicate)` returns once it holds (bounded)."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()

    async def notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), WAIT)


class Smsc(Watched):
    def __init__(self, answer: Answer = accept_all) -> None:
        super().__init__()
        self.answer = answer
        self.port = free_port()
        self.server = smpp34.Server("127.0.0.1", self.port, system_id="TESTSMSC")
        self.submitted: list[Submitted] = []
        self.held: list[smpp34.SubmitSmEvent] = []
        self.max_held = 0
        self.sessions: list[smpp34.Esme] = []
        self.unbound: list[str] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Smsc:
        await self.server.start()
        self._task = asyncio.create_task(self._serve())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for event in self.held:
            event.reject(0x08)   # ESME_RSYSERR
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        await self.server.stop()

    async def _serve(self) -> None:
        while True:
            event = await self.server.next()
            if isinstance(event, smpp34.Esme):
                self.sessions.append(event)
            elif isinstance(event, smpp34.SubmitSmEvent):
                self._answer(event)
            elif isinstance(event, smpp34.Unbound):
                self.unbound.append(event.session_id)
            await self.notify()

    def _answer(self, event: smpp34.SubmitSmEvent) -> None:
        submit = Submitted(event.session_id, event.source_addr, event.source_addr_ton, event.source_addr_npi,
                           event.destination_addr, event.dest_addr_ton, event.dest_addr_npi, event.esm_class,
                           event.data_coding, event.registered_delivery, event.short_message)
        self.submitted.append(submit)
        answer = self.answer(submit, len(self.submitted))
        if isinstance(answer, str):
            event.accept(answer)
        elif isinstance(answer, int):
            event.reject(answer)
        else:
            self.held.append(event)
            self.max_held = max(self.max_held, len(self.held))

    async def release(self, message_id: str) -> None:
        """Accept the oldest held submit_sm."""
        self.held.pop(0).accept(message_id)
        await self.notify()

    async def bound(self, count: int = 1) -> smpp34.Esme:
        """The `count`-th ESME session (waits until it binds)."""
        await self.until(lambda: len(self.sessions) >= count)
        return self.sessions[count - 1]

    async def deliver(self, esme: smpp34.Esme, short_message: bytes, **fields: Any) -> None:
        response = await asyncio.wait_for(esme.deliver_sm(fields.pop("destination_addr", "HeraldShop"),
                                                          short_message, **fields), WAIT)
        assert response.is_success, response


@dataclass
class Bind:
    system_id: str
    password: str
    system_type: str
    interface_version: int


@dataclass
class RawSmsc(Watched):
    """A minimal SMSC: answers bind_transceiver (ROK when the credentials match, else
    `refusal`), enquire_link (unless `answer_enquire_link` is False), submit_sm (ROK, id
    "raw-<n>") and unbind."""

    system_id: str = "herald"
    password: str = "secret"
    system_type: str = "HERALD"
    refusal: int = 0x0E                     # ESME_RINVPASWD
    answer_enquire_link: bool = True
    binds: list[Bind] = field(default_factory=list)
    commands: list[int] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        super().__init__()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RawSmsc:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def count(self, command_id: int) -> int:
        return self.commands.count(command_id)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                length, command_id, _status, sequence = HEADER.unpack(await reader.readexactly(16))
                body = await reader.readexactly(length - 16)
                self.commands.append(command_id)
                reply = self._reply(command_id, sequence, body)
                if reply is not None:
                    writer.write(reply)
                await self.notify()
                if command_id == 0x06:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.notify()
        finally:
            writer.close()

    def _reply(self, command_id: int, sequence: int, body: bytes) -> bytes | None:
        if command_id == 0x09:
            fields = body.split(b"\0", 3)
            bind = Bind(fields[0].decode(), fields[1].decode(), fields[2].decode(), fields[3][0])
            self.binds.append(bind)
            ok = (bind.system_id, bind.password, bind.system_type) == (self.system_id, self.password, self.system_type)
            return _pdu(0x80000009, 0 if ok else self.refusal, sequence, b"RAWSMSC\0")
        if command_id == 0x15:
            return _pdu(0x80000015, 0, sequence) if self.answer_enquire_link else None
        if command_id == 0x04:
            return _pdu(0x80000004, 0, sequence, f"raw-{self.count(0x04)}\0".encode())
        if command_id == 0x06:
            return _pdu(0x80000006, 0, sequence)
        return _pdu(0x80000000, 0x03, sequence)


def _pdu(command_id: int, status: int, sequence: int, body: bytes = b"") -> bytes:
    return HEADER.pack(16 + len(body), command_id, status, sequence) + body


class Proxy(Watched):
    """Relays 127.0.0.1:<port> to the upstream port; `cut()` aborts every relayed connection."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._transports: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await self._server.wait_closed()

    def cut(self) -> None:
        for writer in self._transports:
            writer.transport.abort()
        self._transports.clear()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._transports += [writer, up_writer]
        self.accepted += 1
        pipes = {asyncio.create_task(_pipe(reader, up_writer)), asyncio.create_task(_pipe(up_reader, writer))}
        self._tasks |= pipes
        await self.notify()
        await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        for w in (writer, up_writer):
            w.transport.abort()
        await asyncio.wait(pipes)
        self._tasks -= pipes


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()
