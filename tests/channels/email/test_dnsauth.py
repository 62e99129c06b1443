"""Sending-domain DNS: the records to publish, and verify_domain against a real DNS server on
127.0.0.1 (tests/dnsserver.py) serving each missing or wrong record; the exact problem texts."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from herald.channels.email.dkim import generate_key
from herald.channels.email.dnsauth import DomainCheck, check_domain, make_resolver, records_to_publish, verify_domain
from herald.domain.delivery import DnsRecord, MechanismCheck
from tests.dnsserver import DnsServer, Records, dns_server

DOMAIN = "example.com"
SELECTOR = "h2030"
DKIM_NAME = f"{SELECTOR}._domainkey.{DOMAIN}"
INCLUDE = "amazonses.com"
ED_PEM, ED_TXT = generate_key("ed25519")
ED_KEY = ED_TXT.split("p=", 1)[1]
GOOD: dict[str, list[tuple[str, str]]] = {
    DOMAIN: [("TXT", "google-site-verification=abc123"), ("TXT", f"v=spf1 include:{INCLUDE} ~all"),
             ("MX", "10 mx.example.com")],
    DKIM_NAME: [("TXT", ED_TXT)],
    f"_dmarc.{DOMAIN}": [("TXT", "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com")],
}


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with dns_server(GOOD) as server:
        yield server


def verify(dns: DnsServer, *, key: str = ED_KEY, include: str | None = INCLUDE, lifetime: float = 2.0) -> DomainCheck:
    resolver = make_resolver(["127.0.0.1"], port=dns.port, lifetime=lifetime)
    return asyncio.run(verify_domain(DOMAIN, SELECTOR, key, include, resolver))


def failed(check: MechanismCheck) -> tuple[str, str]:
    assert not check.ok
    return check.problem, check.fix


# --- records to publish ------------------------------------------------------------------------

def test_records_to_publish() -> None:
    rsa_txt = generate_key("rsa-2048")[1]
    records = records_to_publish("Bücher.de.", "s1", rsa_txt, "amazonses.com", "dmarc@bücher.de")
    assert [(r.name, r.type, r.purpose) for r in records] == [
        ("xn--bcher-kva.de", "TXT", "spf"), ("s1._domainkey.xn--bcher-kva.de", "TXT", "dkim"),
        ("_dmarc.xn--bcher-kva.de", "TXT", "dmarc")]
    spf, dkim, dmarc = records
    assert spf.value == "v=spf1 include:amazonses.com ~all" and spf.strings == (spf.value,)
    assert dkim.value == rsa_txt and "".join(dkim.strings) == rsa_txt and len(dkim.strings) == 2
    assert all(len(s.encode()) <= 255 for s in dkim.strings)
    assert dmarc.value == "v=DMARC1; p=none; rua=mailto:dmarc@bücher.de"
    plain = records_to_publish("example.com", "s1", ED_TXT, None, None)
    assert [r.value for r in plain] == ["v=spf1 a mx ~all", ED_TXT, "v=DMARC1; p=none"]
    assert all(isinstance(r, DnsRecord) for r in plain)


def test_the_published_records_verify() -> None:
    published = records_to_publish(DOMAIN, SELECTOR, ED_TXT, INCLUDE, None)
    records: Records = {r.name: [(r.type, r.value)] for r in published}
    with dns_server(records) as server:
        check = verify(server)
    assert check.ok and check.problems == []
    assert [c.found for c in check.checks] == [f"v=spf1 include:{INCLUDE} ~all", ED_TXT, "v=DMARC1; p=none"]


# --- all good, changed while running, TCP --------------------------------------------------------

def test_a_good_domain_passes_and_a_record_changed_while_running_is_seen(dns: DnsServer) -> None:
    check = verify(dns)
    assert check.ok
    assert check.spf == MechanismCheck(True, f"v=spf1 include:{INCLUDE} ~all", "", "")
    dns.remove(f"_dmarc.{DOMAIN}")
    check = verify(dns)
    assert (check.spf.ok, check.dkim.ok, check.dmarc.ok) == (True, True, False)
    assert check.problems == ["no TXT record at _dmarc.example.com (the name does not exist): publish a DMARC record"]


def test_check_domain_takes_the_generated_txt_value_and_answers_per_mechanism(dns: DnsServer) -> None:
    resolver = make_resolver(["127.0.0.1"], port=dns.port, lifetime=2.0)
    checks = asyncio.run(check_domain(DOMAIN, SELECTOR, ED_TXT, INCLUDE, resolver))
    assert sorted(checks) == ["dkim", "dmarc", "spf"] and all(c.ok for c in checks.values())


def test_a_record_too_long_for_udp_is_read_over_tcp(dns: DnsServer) -> None:
    long_spf = "v=spf1 " + " ".join(f"ip4:198.51.{i}.0/24" for i in range(40)) + f" include:{INCLUDE} -all"
    dns.set(DOMAIN, [("TXT", long_spf)])
    check = verify(dns)
    assert check.spf.ok and check.spf.found == long_spf
    assert ("tcp", DOMAIN, "TXT") in dns.queries


# --- SPF ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("records", "problem", "fix"), [
    (None, "no TXT record at example.com (the name does not exist): publish an SPF record",
     'publish TXT example.com "v=spf1 include:amazonses.com ~all"'),
    ([("MX", "10 mx.example.com")], "no TXT record at example.com: publish an SPF record",
     'publish TXT example.com "v=spf1 include:amazonses.com ~all"'),
    ([("TXT", "google-site-verification=abc")],
     "no SPF record at example.com: none of its TXT records starts with v=spf1",
     'publish TXT example.com "v=spf1 include:amazonses.com ~all"'),
    ([("TXT", "v=spf1 include:_spf.google.com ~all"), ("TXT", "v=spf1 include:amazonses.com -all")],
     "2 SPF records at example.com: a domain must have exactly one (receivers treat several as a permanent "
     "error and SPF fails)",
     "replace them with one TXT record: v=spf1 include:_spf.google.com include:amazonses.com ~all"),
    ([("TXT", "v=spf1 include:_spf.google.com mx -all")],
     "the SPF record at example.com does not include include:amazonses.com, so receivers do not authorise "
     "mail sent through it",
     "change the record to: v=spf1 include:_spf.google.com mx include:amazonses.com -all"),
    ([("TXT", "v=spf1 ~include:amazonses.com -all")],
     "the SPF record at example.com has ~include:amazonses.com, which does not authorise it (only a pass "
     "qualifier does)", "change it to include:amazonses.com"),
    ([("TXT", "v=spf1 include:amazonses.com +all")],
     "the SPF record at example.com ends with +all, which authorises every server",
     "use ~all or -all: v=spf1 include:amazonses.com ~all"),
    ([("TXT", "v=spf1 include:amazonses.com.evil.example ~all")],
     "the SPF record at example.com does not include include:amazonses.com, so receivers do not authorise "
     "mail sent through it",
     "change the record to: v=spf1 include:amazonses.com.evil.example include:amazonses.com ~all"),
])
def test_spf_problems(dns: DnsServer, records: list[tuple[str, str]] | None, problem: str, fix: str) -> None:
    if records is None:
        dns.remove(DOMAIN)
    else:
        dns.set(DOMAIN, records)
    check = verify(dns)
    assert failed(check.spf) == (problem, fix)
    assert check.dkim.ok and check.dmarc.ok


@pytest.mark.parametrize(("record", "ok"), [
    ("v=spf1 mx -all", True), ("v=spf1 a/24 ~all", True), ("v=spf1 ip4:192.0.2.0/24 ~all", True),
    ("v=spf1 ip6:2001:db8::/32 -all", True), ("v=spf1 include:_spf.google.com ~all", True),
    ("v=spf1 -all", False), ("v=spf1 ?mx ~ip4:192.0.2.1 -all", False), ("v=spf1 redirect=_spf.example.net", False),
])
def test_spf_without_a_known_include_needs_a_server_it_authorises(dns: DnsServer, record: str, ok: bool) -> None:
    dns.set(DOMAIN, [("TXT", record)])
    check = verify(dns, include=None)
    assert check.spf.ok is ok
    if not ok:
        assert check.spf.problem == ("the SPF record at example.com authorises no server: it has no a, mx, ip4, "
                                     "ip6 or include mechanism with a pass qualifier")


def test_spf_is_read_case_insensitively(dns: DnsServer) -> None:
    dns.set(DOMAIN, [("TXT", "V=SPF1 +INCLUDE:AmazonSES.com. ~ALL")])
    assert verify(dns).spf.ok


# --- DKIM --------------------------------------------------------------------------------------

def test_dkim_problems(dns: DnsServer) -> None:
    wanted = f"v=DKIM1; k=ed25519; p={ED_KEY}"
    cases: list[tuple[list[tuple[str, str]] | None, str, str]] = [
        (None, f"no TXT record at {DKIM_NAME} (the name does not exist): publish the DKIM key",
         f'publish TXT {DKIM_NAME} "{wanted}"'),
        ([("TXT", "v=DKIM1; k=ed25519; p=")], f"the DKIM key at {DKIM_NAME} is revoked (empty p=), so signatures "
                                               "with it fail", f"replace it with: {wanted}"),
        ([("TXT", generate_key("ed25519")[1])],
         f"the DKIM key at {DKIM_NAME} is a different key from the one herald signs with",
         f"replace it with: {wanted}"),
        ([("TXT", ED_TXT), ("TXT", generate_key("ed25519")[1])],
         f"2 TXT records at {DKIM_NAME}: a DKIM selector must have exactly one (receivers pick one at random)",
         f"keep only: {wanted}"),
        ([("TXT", "v=DKIM1; k=ed25519")], f"the TXT record at {DKIM_NAME} is not a DKIM key: it has no p= tag",
         f"replace it with: {wanted}"),
        ([("TXT", f"v=DKIM1; k=rsa; p={ED_KEY}")],
         f"the DKIM record at {DKIM_NAME} says k=rsa but the key is ed25519", f"replace it with: {wanted}"),
        ([("TXT", f"v=DKIM2; k=ed25519; p={ED_KEY}")],
         f"the TXT record at {DKIM_NAME} has v=DKIM2; a DKIM key record has v=DKIM1 or no v= at all",
         f"replace it with: {wanted}"),
        ([("TXT", f'"v=DKIM1; k=ed25519; p={ED_KEY}"')],
         f"the TXT record at {DKIM_NAME} contains quote characters: the DNS interface stored them literally",
         f"enter the value without quotes: {wanted}"),
    ]
    for records, problem, fix in cases:
        if records is None:
            dns.remove(DKIM_NAME)
        else:
            dns.set(DKIM_NAME, records)
        check = verify(dns)
        assert failed(check.dkim) == (problem, fix)
        assert check.spf.ok and check.dmarc.ok


def test_dkim_accepts_whitespace_in_p_a_cname_and_a_split_rsa_key(dns: DnsServer) -> None:
    dns.set(DKIM_NAME, [("TXT", f"v=DKIM1; k=ed25519; p={ED_KEY[:20]} {ED_KEY[20:]}")])
    assert verify(dns).dkim.ok
    dns.set(DKIM_NAME, [("CNAME", "h2030.dkim.esp.example.net")])
    dns.set("h2030.dkim.esp.example.net", [("TXT", ED_TXT)])
    assert verify(dns).dkim.ok
    rsa_txt = generate_key("rsa-2048")[1]
    dns.set(DKIM_NAME, [("TXT", rsa_txt)])   # served as 2 strings of one record
    check = verify(dns, key=rsa_txt.split("p=", 1)[1])
    assert check.dkim.ok and check.dkim.found == rsa_txt


# --- DMARC -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("records", "problem", "fix"), [
    (None, "no TXT record at _dmarc.example.com (the name does not exist): publish a DMARC record",
     'publish TXT _dmarc.example.com "v=DMARC1; p=none"'),
    ([("TXT", "some other text")],
     "no DMARC record at _dmarc.example.com: none of its TXT records starts with v=DMARC1",
     'publish TXT _dmarc.example.com "v=DMARC1; p=none"'),
    ([("TXT", "v=DMARC1; p=none"), ("TXT", "v=DMARC1; p=reject")],
     "2 DMARC records at _dmarc.example.com: receivers ignore DMARC unless there is exactly one",
     "keep only one, e.g.: v=DMARC1; p=none"),
    ([("TXT", "v=DMARC1; rua=mailto:d@example.com")], "the DMARC record at _dmarc.example.com has no p= policy",
     "add one: v=DMARC1; p=none; rua=mailto:d@example.com"),
    ([("TXT", "v=DMARC1; p=block; pct=50")],
     "the DMARC record at _dmarc.example.com has p=block; it must be none, quarantine or reject",
     "use: v=DMARC1; p=none; pct=50"),
    ([("TXT", "v=DMARC1 p=reject")],
     'the DMARC record at _dmarc.example.com must start with "v=DMARC1;" (tags are separated by ";")',
     "use: v=DMARC1; p=none"),
])
def test_dmarc_problems(dns: DnsServer, records: list[tuple[str, str]] | None, problem: str, fix: str) -> None:
    name = f"_dmarc.{DOMAIN}"
    if records is None:
        dns.remove(name)
    else:
        dns.set(name, records)
    check = verify(dns)
    assert failed(check.dmarc) == (problem, fix)
    assert check.spf.ok and check.dkim.ok


@pytest.mark.parametrize("record", ["v=DMARC1; p=reject", "v=DMARC1;p=Quarantine;sp=none", " v = DMARC1 ; p=none"])
def test_valid_dmarc_policies(dns: DnsServer, record: str) -> None:
    dns.set(f"_dmarc.{DOMAIN}", [("TXT", record)])
    assert verify(dns).dmarc.ok


# --- lookups that fail ---------------------------------------------------------------------------

def test_timeouts_and_servfail_say_which_lookup_failed(dns: DnsServer) -> None:
    dns.set(f"_dmarc.{DOMAIN}", [("TIMEOUT", "")])
    dns.set(DOMAIN, [("SERVFAIL", "")])
    check = verify(dns, lifetime=0.5)
    retry = "try again; if it persists, check that the domain's name servers answer"
    assert failed(check.dmarc) == ("could not check DMARC: the DNS lookup of TXT _dmarc.example.com timed out "
                                   "after 0.5s", retry)
    assert failed(check.spf) == ("could not check SPF: no DNS server answered TXT example.com (SERVFAIL or refused)",
                                 retry)
    assert check.dkim.ok


def test_no_server_listening_is_a_lookup_failure() -> None:
    with dns_server({}) as server:
        port = server.port
    resolver = make_resolver(["127.0.0.1"], port=port, lifetime=0.5)
    check = asyncio.run(verify_domain(DOMAIN, SELECTOR, ED_KEY, INCLUDE, resolver))
    assert not check.ok
    assert all(c.problem.startswith("could not check ") for c in check.checks)
