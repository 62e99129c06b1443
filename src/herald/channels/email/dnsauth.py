"""Sending domains: the DNS records a seller publishes (SPF, DKIM, DMARC) and the check that they
are live, with dnspython's async resolver.

What `verify_domain` checks, per mechanism (each result says what it found, the problem in one
line and the fix):
  * SPF (RFC 7208): exactly one TXT record at the domain starting with "v=spf1" (two or more is a
    permanent error for receivers, §4.5); with a known `spf_include` it must contain
    `include:<spf_include>` with a pass qualifier; without one it must authorise some server
    with a pass-qualified `a`, `mx`, `ip4`, `ip6` or `include` mechanism (herald does not know the
    sending server's address, so it checks that such a mechanism is present, not that it
    matches; includes and redirect= are not followed); `+all` is refused (it authorises
    everyone).
  * DKIM (RFC 6376 §3.6): exactly one TXT record at <selector>._domainkey.<domain> whose p= is
    herald's public key (whitespace ignored); an empty p= is a revoked key; another key,
    another k= or v= than DKIM1 are reported as such.
  * DMARC (RFC 7489 §6.3): exactly one TXT record at _dmarc.<domain> starting with "v=DMARC1"
    whose p= is none, quarantine or reject. Only _dmarc.<domain> is asked: a record at the
    organisational domain (found through the public suffix list) is not looked for.
NXDOMAIN, no answer, SERVFAIL and timeouts each give a problem saying which name was asked.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.resolver

from herald.channels.email.dkim import txt_strings
from herald.channels.email.mime import idna_domain
from herald.domain.delivery import DnsRecord, MechanismCheck

Mechanism = Literal["spf", "dkim", "dmarc"]
DMARC_POLICIES = ("none", "quarantine", "reject")
SPF_AUTHORISING = ("a", "mx", "ip4", "ip6", "include")
DEFAULT_LIFETIME = 5.0   # seconds for one lookup, retries included


@dataclass(frozen=True, slots=True)
class DomainCheck:
    """The three checks of one domain (MechanismCheck is the domain's type: ok, found, problem, fix)."""

    domain: str
    spf: MechanismCheck
    dkim: MechanismCheck
    dmarc: MechanismCheck

    @property
    def checks(self) -> tuple[MechanismCheck, MechanismCheck, MechanismCheck]:
        return (self.spf, self.dkim, self.dmarc)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def problems(self) -> list[str]:
        return [check.problem for check in self.checks if not check.ok]

    def by_mechanism(self) -> dict[str, MechanismCheck]:
        return {"spf": self.spf, "dkim": self.dkim, "dmarc": self.dmarc}


# --- what to publish ---------------------------------------------------------------------------

def records_to_publish(domain: str, selector: str, dkim_txt: str, spf_include: str | None,
                       dmarc_rua: str | None) -> list[DnsRecord]:
    """The SPF, DKIM and DMARC records for a sending domain.

    SPF: a domain may have only ONE v=spf1 record. If the domain already has one (for its
    mailbox provider, say), the include must be merged into it, not published as a second
    record: two records make SPF fail everywhere (RFC 7208 §4.5)."""
    domain = normalise_domain(domain)
    spf = spf_record_value(spf_include)
    dkim_name = f"{selector}._domainkey.{domain}"
    dmarc = dmarc_record_value(dmarc_rua)
    return [
        DnsRecord(domain, "TXT", spf, tuple(txt_strings(spf)), "spf"),
        # a long key is several strings of ONE TXT record, not several records
        DnsRecord(dkim_name, "TXT", dkim_txt, tuple(txt_strings(dkim_txt)), "dkim"),
        # p=none only collects reports; quarantine or reject once they are clean
        DnsRecord(f"_dmarc.{domain}", "TXT", dmarc, tuple(txt_strings(dmarc)), "dmarc"),
    ]


def spf_record_value(spf_include: str | None) -> str:
    if spf_include:
        return f"v=spf1 include:{spf_include} ~all"
    return "v=spf1 a mx ~all"


def dmarc_record_value(dmarc_rua: str | None) -> str:
    if dmarc_rua:
        return f"v=DMARC1; p=none; rua=mailto:{dmarc_rua}"
    return "v=DMARC1; p=none"


def normalise_domain(domain: str) -> str:
    return idna_domain(domain.strip().rstrip(".")).lower()


def make_resolver(nameservers: Sequence[str] | None = None, port: int = 53,
                  lifetime: float = DEFAULT_LIFETIME) -> dns.asyncresolver.Resolver:
    """The system resolver (/etc/resolv.conf), or one asking `nameservers` on `port` (tests)."""
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = list(nameservers)
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.port = port
    resolver.lifetime = lifetime
    return resolver


# --- checking ----------------------------------------------------------------------------------

async def check_domain(domain: str, selector: str, dkim_txt: str, spf_include: str | None,
                       resolver: dns.asyncresolver.Resolver | None = None) -> dict[str, MechanismCheck]:
    """`verify_domain` keyed "spf", "dkim", "dmarc", the DKIM key taken from the TXT value herald
    generated ("v=DKIM1; k=...; p=...")."""
    expected_key = _tags(dkim_txt).get("p", "")
    check = await verify_domain(domain, selector, expected_key, spf_include, resolver)
    return check.by_mechanism()


async def verify_domain(domain: str, selector: str, expected_dkim_public_key_b64: str, spf_include: str | None,
                        resolver: dns.asyncresolver.Resolver | None = None) -> DomainCheck:
    """SPF, DKIM and DMARC of `domain` as live DNS serves them (the three lookups run together)."""
    domain = normalise_domain(domain)
    resolver = resolver or make_resolver()
    spf, dkim, dmarc = await asyncio.gather(
        check_spf(domain, spf_include, resolver),
        check_dkim(domain, selector, expected_dkim_public_key_b64, resolver),
        check_dmarc(domain, resolver),
    )
    return DomainCheck(domain, spf, dkim, dmarc)


@dataclass(frozen=True, slots=True)
class _TxtLookup:
    name: str
    values: list[str]          # each record's strings joined
    missing: str = ""          # why there is no record: NXDOMAIN / no TXT record
    failed: str = ""           # the lookup itself failed: timeout, SERVFAIL


async def _lookup_txt(resolver: dns.asyncresolver.Resolver, name: str) -> _TxtLookup:
    try:
        answer = await resolver.resolve(name, "TXT")
    except dns.resolver.NXDOMAIN:
        return _TxtLookup(name, [], missing=f"no TXT record at {name} (the name does not exist)")
    except dns.resolver.NoAnswer:
        return _TxtLookup(name, [], missing=f"no TXT record at {name}")
    except dns.exception.Timeout:
        return _TxtLookup(name, [], failed=f"the DNS lookup of TXT {name} timed out after {resolver.lifetime:g}s")
    except dns.resolver.NoNameservers:
        return _TxtLookup(name, [], failed=f"no DNS server answered TXT {name} (SERVFAIL or refused)")
    except dns.exception.DNSException as error:
        return _TxtLookup(name, [], failed=f"the DNS lookup of TXT {name} failed: {error}")
    values = [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]
    return _TxtLookup(name, values)


def _lookup_failure(mechanism: Mechanism, lookup: _TxtLookup) -> MechanismCheck:
    return MechanismCheck(False, None, f"could not check {mechanism.upper()}: {lookup.failed}",
                          "try again; if it persists, check that the domain's name servers answer")


def _passed(record: str) -> MechanismCheck:
    return MechanismCheck(True, record, "", "")


def _publish(name: str, value: str) -> str:
    """In zone-file form: a value over 255 bytes is split into quoted strings (RFC 7208 §3.3)."""
    return f"publish TXT {name} " + " ".join(f'"{part}"' for part in txt_strings(value))


def _joined(values: Sequence[str]) -> str:
    return " | ".join(values)


# --- SPF ---------------------------------------------------------------------------------------

_SPF_START = re.compile(r"v=spf1(?:\s|\Z)", re.IGNORECASE)


async def check_spf(domain: str, spf_include: str | None, resolver: dns.asyncresolver.Resolver) -> MechanismCheck:
    lookup = await _lookup_txt(resolver, domain)
    if lookup.failed:
        return _lookup_failure("spf", lookup)
    wanted = spf_record_value(spf_include)
    if lookup.missing:
        return MechanismCheck(False, None, f"{lookup.missing}: publish an SPF record", _publish(domain, wanted))
    records = [value for value in lookup.values if _SPF_START.match(value)]
    if not records:
        return MechanismCheck(False, _joined(lookup.values) or None,
                              f"no SPF record at {domain}: none of its TXT records starts with v=spf1",
                              _publish(domain, wanted))
    if len(records) > 1:
        return MechanismCheck(False, _joined(records),
                              f"{len(records)} SPF records at {domain}: a domain must have exactly one "
                              "(receivers treat several as a permanent error and SPF fails)",
                              f"replace them with one TXT record: {_merged_spf(records, spf_include)}")
    return _judge_spf(domain, records[0], spf_include)


def _judge_spf(domain: str, record: str, spf_include: str | None) -> MechanismCheck:
    terms = [_spf_term(term) for term in record.split()[1:]]
    if ("+", "all", "") in terms:
        return MechanismCheck(False, record,
                              f"the SPF record at {domain} ends with +all, which authorises every server",
                              f"use ~all or -all: {_merged_spf([record], spf_include)}")
    if spf_include:
        target = spf_include.rstrip(".").lower()
        for qualifier, name, value in terms:
            if name == "include" and value.rstrip(".").lower() == target:
                if qualifier == "+":
                    return _passed(record)
                return MechanismCheck(False, record,
                                      f"the SPF record at {domain} has {qualifier}include:{spf_include}, which does "
                                      f"not authorise it (only a pass qualifier does)",
                                      f"change it to include:{spf_include}")
        return MechanismCheck(False, record,
                              f"the SPF record at {domain} does not include include:{spf_include}, so receivers do "
                              "not authorise mail sent through it",
                              f"change the record to: {_merged_spf([record], spf_include)}")
    if any(qualifier == "+" and name in SPF_AUTHORISING for qualifier, name, _ in terms):
        return _passed(record)
    return MechanismCheck(False, record,
                          f"the SPF record at {domain} authorises no server: it has no a, mx, ip4, ip6 or include "
                          "mechanism with a pass qualifier",
                          "add the sending server, e.g.: v=spf1 a mx ~all (or ip4:<its address>)")


def _spf_term(term: str) -> tuple[str, str, str]:
    """(qualifier, lower-cased mechanism or modifier name, value): "~include:x.com" ->
    ("~", "include", "x.com"); "redirect=x" -> ("", "redirect", "x")."""
    qualifier = term[0] if term[:1] in ("+", "-", "~", "?") else "+"
    body = term[1:] if term[:1] in ("+", "-", "~", "?") else term
    if "=" in body and ":" not in body.split("=", 1)[0]:
        name, _, value = body.partition("=")
        return "", name.lower(), value
    name, _, value = body.partition(":")
    if "/" in name:   # "a/24", "mx/24"
        name = name.split("/", 1)[0]
    return qualifier, name.lower(), value


def _merged_spf(records: Sequence[str], spf_include: str | None) -> str:
    """One record holding every mechanism of `records` (once), the include added, and one
    ending: the first record's all (never +all) else ~all."""
    mechanisms: list[str] = []
    ending = ""
    for record in records:
        for term in record.split()[1:]:
            qualifier, name, _ = _spf_term(term)
            if name == "all":
                ending = ending or ("~all" if qualifier == "+" else term.lstrip("+"))
            elif term not in mechanisms:
                mechanisms.append(term)
    include = f"include:{spf_include}" if spf_include else ""
    if include and include.lower() not in (term.lower() for term in mechanisms):
        mechanisms.append(include)
    return " ".join(["v=spf1", *mechanisms, ending or "~all"])


# --- DKIM --------------------------------------------------------------------------------------

async def check_dkim(domain: str, selector: str, expected_public_key_b64: str,
                     resolver: dns.asyncresolver.Resolver) -> MechanismCheck:
    name = f"{selector}._domainkey.{domain}"
    lookup = await _lookup_txt(resolver, name)
    if lookup.failed:
        return _lookup_failure("dkim", lookup)
    expected = _without_whitespace(expected_public_key_b64)
    wanted = f"v=DKIM1; k={_key_type(expected)}; p={expected}"
    if lookup.missing:
        return MechanismCheck(False, None, f"{lookup.missing}: publish the DKIM key", _publish(name, wanted))
    if len(lookup.values) > 1:
        return MechanismCheck(False, _joined(lookup.values),
                              f"{len(lookup.values)} TXT records at {name}: a DKIM selector must have exactly one "
                              "(receivers pick one at random)",
                              f"keep only: {wanted}")
    return _judge_dkim(name, lookup.values[0], expected, wanted)


def _judge_dkim(name: str, record: str, expected: str, wanted: str) -> MechanismCheck:
    def wrong(problem: str, fix: str = f"replace it with: {wanted}") -> MechanismCheck:
        return MechanismCheck(False, record, problem, fix)

    if '"' in record:
        return wrong(f"the TXT record at {name} contains quote characters: the DNS interface stored them literally",
                     f"enter the value without quotes: {wanted}")
    tags = _tags(record)
    if "v" in tags and tags["v"] != "DKIM1":
        return wrong(f"the TXT record at {name} has v={tags['v']}; a DKIM key record has v=DKIM1 or no v= at all")
    if "p" not in tags:
        return wrong(f"the TXT record at {name} is not a DKIM key: it has no p= tag")
    published = _without_whitespace(tags["p"])
    if not published:
        return wrong(f"the DKIM key at {name} is revoked (empty p=), so signatures with it fail")
    if published != expected:
        return wrong(f"the DKIM key at {name} is a different key from the one herald signs with")
    key_type = tags.get("k", "rsa").lower()
    if key_type != _key_type(expected):
        return wrong(f"the DKIM record at {name} says k={key_type} but the key is {_key_type(expected)}")
    return _passed(record)


def _key_type(public_key_b64: str) -> str:
    """A raw Ed25519 public key is 32 bytes (44 base64 characters); an RSA one is a DER SPKI."""
    return "ed25519" if len(public_key_b64) == 44 else "rsa"


def _tags(record: str) -> dict[str, str]:
    """RFC 6376 §3.2 tag=value list; names case-sensitive, whitespace around them dropped."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        name, equals, value = part.partition("=")
        if equals and name.strip() and name.strip() not in tags:
            tags[name.strip()] = value.strip()
    return tags


def _without_whitespace(value: str) -> str:
    return "".join(value.split())


# --- DMARC -------------------------------------------------------------------------------------

_DMARC_START = re.compile(r"\s*v\s*=\s*DMARC1\b")   # RFC 7489 §6.6.3: other TXT records are discarded


async def check_dmarc(domain: str, resolver: dns.asyncresolver.Resolver) -> MechanismCheck:
    name = f"_dmarc.{domain}"
    lookup = await _lookup_txt(resolver, name)
    if lookup.failed:
        return _lookup_failure("dmarc", lookup)
    wanted = dmarc_record_value(None)
    if lookup.missing:
        return MechanismCheck(False, None, f"{lookup.missing}: publish a DMARC record",
                              _publish(name, wanted))
    records = [value for value in lookup.values if _DMARC_START.match(value)]
    if not records:
        return MechanismCheck(False, _joined(lookup.values),
                              f"no DMARC record at {name}: none of its TXT records starts with v=DMARC1",
                              _publish(name, wanted))
    if len(records) > 1:
        return MechanismCheck(False, _joined(records),
                              f"{len(records)} DMARC records at {name}: receivers ignore DMARC unless there is "
                              "exactly one", f"keep only one, e.g.: {records[0]}")
    return _judge_dmarc(name, records[0])


def _judge_dmarc(name: str, record: str) -> MechanismCheck:
    tags = _tags(record)
    if next(iter(tags), None) != "v" or tags["v"] != "DMARC1":
        return MechanismCheck(False, record,
                              f'the DMARC record at {name} must start with "v=DMARC1;" (tags are separated by ";")',
                              f"use: {_dmarc_fixed(record)}")
    policy = tags.get("p")
    if policy is None:
        return MechanismCheck(False, record, f"the DMARC record at {name} has no p= policy",
                              f"add one: {_dmarc_fixed(record)}")
    if policy.lower() not in DMARC_POLICIES:
        return MechanismCheck(False, record,
                              f"the DMARC record at {name} has p={policy}; it must be none, quarantine or reject",
                              f"use: {_dmarc_fixed(record)}")
    return _passed(record)


def _dmarc_fixed(record: str) -> str:
    """The record with v=DMARC1 first and p= (none unless valid) second, its other tags kept."""
    tags = _tags(record)
    policy = tags.get("p", "none")
    policy = policy if policy.lower() in DMARC_POLICIES else "none"
    rest = [f"{name}={value}" for name, value in tags.items() if name not in ("v", "p")]
    return "; ".join(["v=DMARC1", f"p={policy}", *rest])


__all__ = [
    "DomainCheck",
    "check_dkim",
    "check_dmarc",
    "check_domain",
    "check_spf",
    "dmarc_record_value",
    "make_resolver",
    "normalise_domain",
    "records_to_publish",
    "spf_record_value",
    "verify_domain",
]
