"""The email commands of `herald`, run as real processes as a seller would, on SQLite and
PostgreSQL: a store's sender, a sending domain (DNS records printed, verified against a dnslib
DNS server on 127.0.0.1), providers (a secret read from stdin and stored sealed), `send-test`
to an aiosmtpd sink (the message DKIM-verified by dkimpy through the same DNS server), and
`bounces parse` on samples of the bounce corpus.

The commands run through the installed `herald` entry point (herald.cli:main). `python -m
herald.cli` does not see the email commands: see test_python_dash_m_has_the_email_commands."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dkim
import pytest
from sqlalchemy import select

from herald.bootstrap import Container, build
from herald.db.tables import messages
from herald.db.tables import providers as providers_table
from herald.domain.auth import Principal
from herald.services import providers, templates
from tests.channels.email.test_sendgrid import new_keys
from tests.conftest import TEST_SECRET, make_settings
from tests.dnsserver import DnsServer
from tests.services.test_email import MJML, Sink, dns, sink  # noqa: F401 - dns and sink are fixtures

# What `herald` on PATH runs: `from herald.cli import main; main()` (pyproject [project.scripts]).
HERALD = [sys.executable, "-m", "herald.cli"]
BOUNCES = Path(__file__).parent / "channels" / "email" / "bounces"
INBOUND = "in.herald.test"


def run(env: dict[str, str], *args: str, ok: bool = True, stdin: str | None = None,
        command: list[str] = HERALD) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=120, check=False,
                          input=stdin)
    if ok:
        assert proc.returncode == 0, f"herald {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def flat(text: str) -> str:
    """Console output with its line breaks and runs of spaces collapsed (rich wraps long lines)."""
    return " ".join(text.split())


@pytest.fixture
def env(database_url: str, dns: DnsServer) -> dict[str, str]:  # noqa: F811 - the dns fixture
    return {**os.environ, "HERALD_DATABASE_URL": database_url, "HERALD_SECRET_KEY": TEST_SECRET,
            "HERALD_SQLITE_SYNCHRONOUS": "NORMAL", "HERALD_LOG_LEVEL": "warning",
            "HERALD_DNS_NAMESERVERS": json.dumps([f"127.0.0.1:{dns.port}"]), "HERALD_INBOUND_DOMAIN": INBOUND,
            "HERALD_BASE_URL": "https://herald.test", "COLUMNS": "200"}


@pytest.fixture
def local(database_url: str) -> Iterator[Container]:
    """The same database and master key as the commands, for what the test sets up or inspects directly."""
    c = build(make_settings(database_url))
    yield c
    c.close()


def printed_records(output: str) -> dict[str, tuple[str, str, list[str]]]:
    """`herald domains add/show` output -> purpose -> (name, type, the quoted strings)."""
    found: dict[str, tuple[str, str, list[str]]] = {}
    lines = output.splitlines()
    for number, line in enumerate(lines):
        head = re.fullmatch(r"(SPF|DKIM|DMARC)\s+(\S+)\s+(TXT)", line.strip())
        if head:
            strings = json.loads("[" + ", ".join(re.findall(r'"(?:[^"\\]|\\.)*"', lines[number + 1])) + "]")
            found[head.group(1).lower()] = (head.group(2), head.group(3), strings)
    return found


def test_domain_provider_and_send_test(env: dict[str, str], local: Container, dns: DnsServer,  # noqa: F811
                                       sink: tuple[Sink, int]) -> None:  # noqa: F811
    handler, sink_port = sink
    ws = json.loads(run(env, "workspace", "create", "--name", "Corner Shop", "--slug", "corner", "--json").stdout)
    store = json.loads(run(env, "stores", "add", "--workspace", "corner", "--name", "Corner", "--platform", "custom",
                           "--currency", "USD", "--json").stdout)["id"]
    sender = run(env, "stores", "sender", store, "--from", "orders@shop.example", "--name", "Corner Shop",
                 "--address", "1 Harbour Road, Lisbon").stdout
    assert "from Corner Shop <orders@shop.example>; postal address: 1 Harbour Road, Lisbon" in flat(sender)

    # -- the sending domain: records printed, refused until published, then verified ------------------------
    added = run(env, "domains", "add", "shop.example", "--workspace", "corner").stdout
    selector = re.search(r"selector (\S+?)\)", added)
    assert selector, added
    records = printed_records(added)
    assert set(records) == {"spf", "dkim", "dmarc"}, added
    assert records["spf"][0] == "shop.example" and records["dmarc"][0] == "_dmarc.shop.example"
    assert records["dkim"][0] == f"{selector.group(1)}._domainkey.shop.example"
    assert records["dkim"][2][0].startswith("v=DKIM1; k=rsa; p=")
    assert len(records["dkim"][2]) == 2   # an RSA-2048 key is longer than one TXT string
    assert all(0 < len(s.encode()) <= 255 for _name, _type, strings in records.values() for s in strings)
    assert records["spf"][2][0].startswith("v=spf1") and records["dmarc"][2][0].startswith("v=DMARC1")

    unpublished = run(env, "domains", "verify", "shop.example", "--workspace", "corner", ok=False)
    assert unpublished.returncode == 1
    said = flat(unpublished.stdout)
    for purpose, (name, _type, _strings) in records.items():   # what is missing, where, and what to publish
        assert re.search(rf"FAIL {purpose.upper()}: \(nothing found\) no TXT record at {re.escape(name)} "
                         rf"[^:]*: publish [^:]*fix: publish TXT {re.escape(name)} ", said), said
    assert "shop.example is not verified" in flat(unpublished.stderr)

    for name, rtype, strings in records.values():   # publish exactly what was printed
        dns.set(name, [(rtype, "".join(strings))])
    verified = run(env, "domains", "verify", "shop.example", "--workspace", "corner")
    assert "shop.example is verified" in verified.stdout
    assert [line.split()[:2] for line in verified.stdout.splitlines() if line.strip().startswith(("ok", "FAIL"))] == [
        ["ok", "SPF:"], ["ok", "DKIM:"], ["ok", "DMARC:"]]
    listed = run(env, "domains", "list", "--workspace", "corner").stdout
    assert re.search(rf"shop\.example\s+│\s+verified\s+│\s+{selector.group(1)}\s+│\s+rsa-2048", listed), listed
    shown = run(env, "domains", "show", "shop.example", "--workspace", "corner").stdout
    assert shown.startswith("shop.example: verified (checked ") and printed_records(shown) == records

    # -- providers: SMTP to the sink; SendGrid with its secrets read from stdin -------------------------------
    smtp = run(env, "providers", "add", "--workspace", "corner", "--kind", "smtp", "--name", "sink",
               "--config", "host=127.0.0.1", "--config", f"port={sink_port}", "--config", "security=none").stdout
    smtp_id = re.search(r"provider (prv_\w+) \(smtp\) added", smtp)
    assert smtp_id and f"https://herald.test/callbacks/{smtp_id.group(1)}" in smtp
    api_key, webhook_key = "SG.cli-test-api-key.not-real", new_keys().public_b64
    grid = run(env, "providers", "add", "--workspace", "corner", "--kind", "sendgrid", "--name", "grid",
               "--priority", "5", "--secret", "api_key=-", "--secret", "webhook_key=-",
               stdin=f"{api_key}\n{webhook_key}\n")
    listed_providers = run(env, "providers", "list", "--workspace", "corner").stdout
    for output in (grid.stdout + grid.stderr, listed_providers):
        assert api_key not in output and webhook_key[:40] not in output
    assert listed_providers.index("sink") < listed_providers.index("grid")   # priority 0 before 5
    with local.engine.begin() as conn:
        row = dict(conn.execute(select(providers_table).where(providers_table.c.name == "grid")).mappings().one())
    assert row["kind"] == "sendgrid" and row["workspace_id"] == ws["id"] and row["config"] == {}
    stored = json.dumps({k: str(v) for k, v in row.items()})
    assert api_key not in stored and webhook_key not in stored   # sealed at rest
    assert providers.secrets_of(local.master_key, row) == {"api_key": api_key, "webhook_key": webhook_key}

    # -- send-test through the SMTP provider; the sink gets one DKIM-verified message ----------------------
    with local.engine.begin() as conn:
        templates.create_template(conn, Principal("test", ws["id"], None), name="order-confirmation",
                                  channel="email", purpose="transactional", default_language="en",
                                  variants={"en": {"subject": "Order {{ order.name }}", "body": MJML}},
                                  store_id=None, now=local.clock.now())
    sent = run(env, "send-test", "--to", "ana@example.net", "--template", "order-confirmation", "--store", store)
    message_id = re.search(r"sent (msg_\w+) to ana@example\.net", sent.stdout)
    assert message_id, sent.stdout
    assert len(handler.received) == 1
    mail_from, rcpts, raw = handler.received[0]
    assert (mail_from, rcpts) == (f"bounce+{message_id.group(1)}@{INBOUND}", ["ana@example.net"])
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Message-ID"] == f"<{message_id.group(1)}@shop.example>"
    assert parsed["From"] == "Corner Shop <orders@shop.example>"
    assert dkim.verify(raw, dnsfunc=dns.dkim_dnsfunc())
    with local.engine.begin() as conn:
        status, provider = conn.execute(select(messages.c.status, messages.c.provider)
                                        .where(messages.c.id == message_id.group(1))).one()
    assert (status, provider) == ("sent", "smtp")

    unknown = run(env, "send-test", "--to", "ana@example.net", "--template", "nope", "--store", store, ok=False)
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr.strip().splitlines() == ["error: no template with id or name 'nope' in this workspace"]
    assert len(handler.received) == 1


def _bounce_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HERALD_DATABASE_URL": f"sqlite:///{tmp_path}/unused.db", "HERALD_SECRET_KEY": TEST_SECRET,
            "HERALD_LOG_LEVEL": "warning"}


def failed(recipient: str, status: str, reply_code: int, reason: str) -> dict[str, object]:
    return {"recipient": recipient, "status": status, "reply_code": reply_code, "reason": reason, "permanent": True}


@pytest.mark.parametrize(("sample", "expected"), [
    ("postfix-user-unknown.eml", [failed("jane@acme.example", "5.1.1", 550, "invalid_address")]),
    ("office365-dsn-two-recipients.eml", [failed("full@contoso.example", "5.2.2", 554, "mailbox_full"),
                                          failed("gone@contoso.example", "5.1.10", 550, "invalid_address")]),
    ("exim-plain-user-unknown.eml", [failed("kijitora@example.ed.example", "5.1.1", 550, "invalid_address")]),
    ("not-bounce-human-reply.eml", []),
])
def test_bounces_parse_json(tmp_path: Path, sample: str, expected: list[dict[str, object]]) -> None:
    """No database needed: the command only classifies the file (the database URL is never opened)."""
    proc = run(_bounce_env(tmp_path), "bounces", "parse", str(BOUNCES / sample), "--json")
    assert json.loads(proc.stdout) == expected
    assert not (tmp_path / "unused.db").exists()


def test_python_dash_m_has_the_email_commands(tmp_path: Path) -> None:
    proc = run(_bounce_env(tmp_path), "domains", "--help", ok=False, command=[sys.executable, "-m", "herald.cli"])
    assert proc.returncode == 0 and "Sending domains" in proc.stdout, proc.stderr
