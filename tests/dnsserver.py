"""An authoritative DNS server on 127.0.0.1 for tests (dnslib wire format, UDP and TCP on the same
random free port): a real DNS exchange for dkimpy's key lookups and the sending-domain checks.

    with dns_server({"sel._domainkey.example.com": [("TXT", "v=DKIM1; k=rsa; p=...")]}) as dns:
        resolver = dns.resolver()          # a dnspython Resolver pointed at it
        dns.set("_dmarc.example.com", [("TXT", "v=DMARC1; p=none")])   # change while it runs

Records: name -> [(rtype, value)], names case-insensitive, without the trailing dot. Types:
TXT (one string, served split into <= 255-byte strings as a zone file would hold a long value),
A, AAAA, CNAME (followed within the zone), MX ("10 mx.example.com"), NS. A name that is not in
the dict answers NXDOMAIN; a name present without the asked type answers NOERROR with no answer.
Failures to simulate: ("SERVFAIL", "") answers SERVFAIL; ("TIMEOUT", "") never answers.

UDP answers above 512 bytes (or the EDNS size the query offers) are sent truncated (TC), so a
client retries over TCP. Shutdown is bounded: the server threads are joined with a timeout.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import dns.exception
import dns.resolver
from dnslib import AAAA, CNAME, MX, NS, QTYPE, RCODE, RR, TXT, A, DNSRecord

Records = Mapping[str, Sequence[tuple[str, str]]]
TTL = 60
UDP_PAYLOAD = 512            # RFC 1035 §4.2.1, without EDNS
SHUTDOWN_SECONDS = 5.0


def _key(name: str) -> str:
    return name.rstrip(".").lower()


@dataclass
class DnsServer:
    host: str
    port: int
    _records: dict[str, list[tuple[str, str]]]
    _lock: threading.Lock = field(default_factory=threading.Lock)
    queries: list[tuple[str, str, str]] = field(default_factory=list)   # (protocol, name, type)

    # --- changing the zone while it runs -------------------------------------------------------
    def set(self, name: str, records: Sequence[tuple[str, str]]) -> None:
        with self._lock:
            self._records[_key(name)] = [(rtype.upper(), value) for rtype, value in records]

    def remove(self, name: str) -> None:
        with self._lock:
            self._records.pop(_key(name), None)

    def lookup(self, name: str) -> list[tuple[str, str]] | None:
        with self._lock:
            found = self._records.get(_key(name))
            return None if found is None else list(found)

    # --- clients pointed at it -------------------------------------------------------------------
    def resolver(self, lifetime: float = 2.0) -> dns.resolver.Resolver:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.lifetime = lifetime
        return resolver

    def dkim_dnsfunc(self) -> Callable[..., bytes | None]:
        """dkimpy's `dnsfunc(name, timeout=5)`: the TXT at `name` (the strings concatenated), or
        None; the same behaviour as dkimpy's own dnsplug.get_txt_dnspython, asking this server."""
        def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
            resolver = self.resolver(lifetime=timeout)
            try:
                answer = resolver.resolve(name.decode("ascii"), "TXT", raise_on_no_answer=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoNameservers):
                return None
            for rrset in answer.response.answer:
                if rrset.rdtype == dns.rdatatype.TXT:
                    return b"".join(next(iter(rrset)).strings)
            return None
        return get_txt

    # --- answering -------------------------------------------------------------------------------
    def answer(self, query: bytes, protocol: str) -> bytes | None:
        request = DNSRecord.parse(query)
        question = request.q
        name, qtype = str(question.qname), QTYPE[question.qtype]
        self.queries.append((protocol, _key(name), qtype))
        reply = request.reply()   # QR, AA, RA set; the question copied
        records = self.lookup(name)
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif any(rtype == "TIMEOUT" for rtype, _ in records):
            return None
        elif any(rtype == "SERVFAIL" for rtype, _ in records):
            reply.header.rcode = RCODE.SERVFAIL
        else:
            self._add_answers(reply, name, qtype, records)
        packed: bytes = reply.pack()
        if protocol == "udp" and len(packed) > _udp_limit(request):
            # TC with the question kept (dnslib's truncate() drops it, and dnspython ignores
            # an answer whose question does not match)
            truncated = request.reply()
            truncated.header.tc = 1
            packed = truncated.pack()
        return packed

    def _add_answers(self, reply: DNSRecord, name: str, qtype: str, records: list[tuple[str, str]],
                     depth: int = 0) -> None:
        for rtype, value in records:
            if rtype == qtype or qtype == "ANY":
                reply.add_answer(RR(name, getattr(QTYPE, rtype), rdata=_rdata(rtype, value), ttl=TTL))
            elif rtype == "CNAME":
                reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(value), ttl=TTL))
                target = self.lookup(value)
                if target is not None and depth < 8:
                    self._add_answers(reply, value.rstrip(".") + ".", qtype, target, depth + 1)


def _udp_limit(request: DNSRecord) -> int:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(int(rr.rclass), UDP_PAYLOAD)   # EDNS: the class field is the payload size
    return UDP_PAYLOAD


def _rdata(rtype: str, value: str) -> object:
    if rtype == "TXT":
        data = value.encode("utf-8")
        return TXT([data[i:i + 255] for i in range(0, len(data), 255)] or [b""])
    if rtype == "MX":
        preference, exchange = value.split()
        return MX(exchange, int(preference))
    makers: dict[str, Callable[[str], object]] = {"A": A, "AAAA": AAAA, "CNAME": CNAME, "NS": NS}
    if rtype not in makers:
        raise ValueError(f"tests/dnsserver.py does not serve {rtype} records")
    return makers[rtype](value)


class _UdpHandler(socketserver.BaseRequestHandler):
    server: _UdpServer

    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.dns.answer(data, "udp")
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    """RFC 1035 §4.2.2: each message prefixed by its 2-byte length; several per connection."""

    server: _TcpServer

    def handle(self) -> None:
        self.request.settimeout(SHUTDOWN_SECONDS)
        try:
            while (prefix := _read_exactly(self.request, 2)) is not None:
                query = _read_exactly(self.request, struct.unpack("!H", prefix)[0])
                if query is None:
                    return
                reply = self.server.dns.answer(query, "tcp")
                if reply is None:
                    return
                self.request.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True
    block_on_close = False
    dns: DnsServer


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = False
    dns: DnsServer


def _bind_pair(host: str) -> tuple[_UdpServer, _TcpServer]:
    """UDP on a free port, then TCP on the same port (retried a bounded number of times)."""
    last_error: OSError | None = None
    for _ in range(20):
        udp = _UdpServer((host, 0), _UdpHandler)
        port = udp.server_address[1]
        try:
            return udp, _TcpServer((host, port), _TcpHandler)
        except OSError as error:
            udp.server_close()
            last_error = error
    raise RuntimeError(f"no free port for UDP and TCP together: {last_error}")


@contextmanager
def dns_server(records: Records | None = None, host: str = "127.0.0.1") -> Iterator[DnsServer]:
    udp, tcp = _bind_pair(host)
    server = DnsServer(host, udp.server_address[1], {})
    for name, values in (records or {}).items():
        server.set(name, values)
    udp.dns = tcp.dns = server
    threads = [threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
               for s in (udp, tcp)]
    for thread in threads:
        thread.start()
    try:
        yield server
    finally:
        for s in (udp, tcp):
            s.shutdown()
            s.server_close()
        for thread in threads:
            thread.join(SHUTDOWN_SECONDS)
        assert not any(thread.is_alive() for thread in threads), "the DNS server threads did not stop"
