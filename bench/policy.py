"""Send-time policy decisions per second for one 100,000-recipient batch, on SQLite and PostgreSQL,
through the production path (services/policy.decide_batch: load the batch's context, then
domain/policy.decide for every recipient).

The data is what a seller a year in would have: 100,000 contacts across 8 countries (half with
their own time zone, 60% with a phone number valid for their country), ~1.6 consent records per
contact (grants, withdrawals, pending double opt-ins; store-specific and workspace-wide, some
with history), ~3% of emails and 1% of phones suppressed, and ~100,000 marketing messages sent
in the last 10 days to 40% of the contacts (so the frequency caps have something to count). The
batch asks one marketing message per contact on the country's first channel (email; SMS in the
Gulf; WhatsApp templates in Brazil), so the quiet-hours check resolves time zones from phone
numbers for a fifth of them. The decision mix (sent / refused per code / deferred) is printed.

Reference, same run, same database: the cheapest read a batch decision cannot avoid, the
contacts' time zone, phone and country fetched by id in chunks of 1,000 (rows/s). The ratio says
how close the policy is to that floor.

    .venv/bin/python bench/policy.py                          # SQLite, and PostgreSQL if a URL is set
    HERALD_BENCH_DATABASE_URL=postgresql://127.0.0.1/test .venv/bin/python bench/policy.py --runs 5
    .venv/bin/python bench/policy.py --recipients 20000 --runs 1   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import phonenumbers
from sqlalchemy import Engine, select, text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from herald.db.bulk import insert_many  # noqa: E402
from herald.db.engine import make_engine  # noqa: E402
from herald.db.migrate import upgrade  # noqa: E402
from herald.db.tables import (  # noqa: E402
    consent_records,
    contacts,
    messages,
    sending_domains,
    suppressions,
)
from herald.domain.auth import Principal  # noqa: E402
from herald.domain.policy import SendRequest, WhatsAppTemplate, decide_all  # noqa: E402
from herald.services import policy  # noqa: E402
from herald.services import workspaces as workspace_service  # noqa: E402

NOW = datetime(2026, 11, 23, 17, 30, tzinfo=UTC)  # evening in Europe and the Gulf, morning in the Americas
# (country, weight, zones for contacts that have their own time zone)
MARKETS = [("US", 40, ["America/New_York", "America/Chicago", "America/Los_Angeles"]),
           ("BR", 15, ["America/Sao_Paulo"]), ("DE", 10, ["Europe/Berlin"]), ("GB", 10, ["Europe/London"]),
           ("IN", 8, ["Asia/Kolkata"]), ("FR", 7, ["Europe/Paris"]), ("AE", 5, ["Asia/Dubai"]),
           ("JP", 5, ["Asia/Tokyo"])]
REASONS = ["unsubscribed"] * 5 + ["hard_bounce"] * 3 + ["complaint", "invalid", "manual"]
CHUNK = 5000
TOMBSTONE_KEY = b"k" * 32  # as in production: erased addresses' tombstones are looked up too


def phone_for(country: str, i: int) -> str:
    example = phonenumbers.example_number_for_type(country, phonenumbers.PhoneNumberType.MOBILE)
    assert example is not None
    national = str(example.national_number)
    varied = national[:-5] + f"{i % 100000:05d}"
    return f"+{example.country_code}{varied}"


def populate(engine: Engine, n: int, seed: int = 7) -> tuple[str, str, list[SendRequest]]:
    rnd = random.Random(seed)
    with engine.begin() as conn:
        ws = workspace_service.create_workspace(conn, name="Bench", slug=f"bench-{uuid.uuid4().hex[:8]}", now=NOW)
        store = workspace_service.create_store(conn, Principal("bench", ws["id"], None), name="Shop",
                                               platform="shopify", currency="USD", timezone="America/New_York",
                                               domain="shop.example", now=NOW)
        conn.execute(sending_domains.insert().values(
            id=f"sd_{uuid.uuid4().hex[:20]}", workspace_id=ws["id"], domain="shop.example", dkim_selector="s1",
            dkim_algorithm="rsa-2048", dkim_private_key="(unused)", dkim_txt="v=DKIM1", status="verified",
            created_at=NOW))
    ws_id, store_id = ws["id"], store["id"]
    weights = [m[1] for m in MARKETS]
    requests: list[SendRequest] = []
    rows: dict[str, list[dict[str, Any]]] = {"contacts": [], "consent": [], "suppressions": [], "messages": []}
    for i in range(n):
        country, _w, zones = rnd.choices(MARKETS, weights)[0]
        cid = f"ct_{i:026d}"
        email = f"buyer{i}@example.com"
        phone = phone_for(country, i) if rnd.random() < 0.6 or country in ("AE", "BR") else None
        rows["contacts"].append({"id": cid, "workspace_id": ws_id, "email": email, "phone": phone,
                                 "country": country, "timezone": rnd.choice(zones) if rnd.random() < 0.5 else None,
                                 "attributes": {}, "tags": [], "created_at": NOW, "updated_at": NOW})
        _consents(rnd, rows["consent"], ws_id, store_id, cid, phone)
        if rnd.random() < 0.03:
            rows["suppressions"].append(_suppression(rnd, ws_id, "email", email, i))
        if phone and rnd.random() < 0.01:
            rows["suppressions"].append(_suppression(rnd, ws_id, "sms", phone, i))
        if rnd.random() < 0.4:
            for k in range(rnd.randint(1, 4)):
                sent = NOW - timedelta(minutes=rnd.randint(10, 10 * 24 * 60))
                rows["messages"].append({"id": f"msg_{i:020d}{k:02d}", "workspace_id": ws_id, "store_id": store_id,
                                         "contact_id": cid, "channel": "email", "purpose": "marketing",
                                         "to_address": email, "status": "sent", "context": {}, "attempts": 1,
                                         "created_at": sent, "updated_at": sent, "sent_at": sent})
        requests.append(_request(i, cid, store_id, country, email, phone))
    with engine.begin() as conn:
        for table, key in ((contacts, "contacts"), (consent_records, "consent"), (suppressions, "suppressions"),
                           (messages, "messages")):
            for start in range(0, len(rows[key]), CHUNK):
                insert_many(conn, table, rows[key][start:start + CHUNK])
    if engine.dialect.name == "postgresql":  # what autovacuum would do after a bulk load (committed: ANALYZE
        with engine.begin() as conn:          # in a rolled-back transaction leaves no statistics)
            conn.execute(text("ANALYZE"))
    return ws_id, store_id, requests


def _consents(rnd: random.Random, into: list[dict[str, Any]], ws_id: str, store_id: str, cid: str,
              phone: str | None) -> None:
    def add(channel: str, state: str, store: str | None, days_ago: float) -> None:
        into.append({"workspace_id": ws_id, "contact_id": cid, "store_id": store, "channel": channel,
                     "purpose": "marketing", "state": state, "source": "shopify",
                     "recorded_at": NOW - timedelta(days=days_ago)})
    roll = rnd.random()
    if roll < 0.80:
        add("email", "granted", store_id, rnd.uniform(30, 400))
        if rnd.random() < 0.15:  # history: withdrew everywhere, then maybe came back at the store
            add("email", "withdrawn", None, rnd.uniform(5, 29))
            if rnd.random() < 0.5:
                add("email", "granted", store_id, rnd.uniform(0.1, 4))
    elif roll < 0.87:
        add("email", "withdrawn", store_id, rnd.uniform(1, 300))
    elif roll < 0.90:
        add("email", "pending", store_id, rnd.uniform(0.1, 3))
    if phone and rnd.random() < 0.7:
        add("sms", "granted", store_id, rnd.uniform(1, 400))
        add("whatsapp", "granted", None, rnd.uniform(1, 400))


def _suppression(rnd: random.Random, ws_id: str, channel: str, address: str, i: int) -> dict[str, Any]:
    return {"workspace_id": ws_id, "channel": channel, "address": address, "reason": rnd.choice(REASONS),
            "source": "bench", "created_at": NOW - timedelta(days=i % 300)}


def _request(i: int, cid: str, store_id: str, country: str, email: str, phone: str | None) -> SendRequest:
    channel, address, template = "email", email, None
    if country == "AE" and phone:
        channel, address = "sms", phone
    elif country == "BR" and phone:
        channel, address, template = "whatsapp", phone, WhatsAppTemplate("marketing", approved=True)
    return SendRequest(message_id=f"msg_new_{i:020d}", contact_id=cid, store_id=store_id, channel=channel,
                       purpose="marketing", address=address,
                       sending_domain="shop.example" if channel == "email" else None, whatsapp_template=template)


def reference(engine: Engine, ids: list[str]) -> float:
    """Rows/s of the floor: the contacts' time zone, phone and country by id, 1,000 per query."""
    c = contacts.c
    started = time.perf_counter()
    with engine.begin() as conn:
        for start in range(0, len(ids), 1000):
            conn.execute(select(c.id, c.timezone, c.phone, c.country).where(c.id.in_(ids[start:start + 1000]))).all()
    return len(ids) / (time.perf_counter() - started)


def one_run(engine: Engine, ws_id: str, requests: list[SendRequest]) -> dict[str, Any]:
    """The headline: decide_batch. Then, for the breakdown, the same batch read (load_context) and
    decided (decide_all) separately."""
    with engine.begin() as conn:
        settings = policy.get_settings(conn, ws_id)
        started = time.perf_counter()
        decisions = policy.decide_batch(conn, ws_id, requests, now=NOW, settings=settings,
                                        tombstone_key=TOMBSTONE_KEY, fallback_timezone="America/New_York")
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        ctx = policy.load_context(conn, ws_id, requests, now=NOW, settings=settings,
                                  tombstone_key=TOMBSTONE_KEY, fallback_timezone="America/New_York")
        load_s = time.perf_counter() - started
        started = time.perf_counter()
        alone = decide_all(requests, ctx, NOW)
        decide_s = time.perf_counter() - started
    assert alone == decisions, "decide_batch and load_context + decide_all disagree"
    mix = Counter(d.code or "sent" for d in decisions)
    return {"decisions_per_s": len(requests) / seconds, "load_s": load_s, "decide_s": decide_s,
            "decide_us_each": decide_s / len(requests) * 1e6, "mix": dict(mix)}


def measure(name: str, engine: Engine, n: int, runs: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    ws_id, _store, requests = populate(engine, n)
    print(f"[{name}] populated {n:,} contacts in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    ids = sorted({r.contact_id for r in requests if r.contact_id})
    results, refs = [], []
    for run in range(runs):
        refs.append(reference(engine, ids))
        results.append(one_run(engine, ws_id, requests))
        print(f"[{name}] run {run + 1}: {results[-1]['decisions_per_s']:,.0f} decisions/s "
              f"(load {results[-1]['load_s']:.2f} s, decide {results[-1]['decide_s']:.2f} s); "
              f"reference {refs[-1]:,.0f} rows/s", file=sys.stderr)
    rate = statistics.median(r["decisions_per_s"] for r in results)
    ref = statistics.median(refs)
    return {"backend": name, "recipients": n, "runs": runs, "decisions_per_s": round(rate),
            "min": round(min(r["decisions_per_s"] for r in results)),
            "max": round(max(r["decisions_per_s"] for r in results)),
            "load_s": round(statistics.median(r["load_s"] for r in results), 3),
            "decide_us_each": round(statistics.median(r["decide_us_each"] for r in results), 2),
            "reference_rows_per_s": round(ref), "ratio": round(rate / ref, 3), "goal": 50000,
            "goal_met": rate >= 50000, "mix": results[-1]["mix"]}


@contextmanager
def sqlite_engine() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory(prefix="herald-policy-bench-") as tmp:
        engine = make_engine(f"sqlite:///{tmp}/bench.db")
        upgrade(engine)
        try:
            yield engine
        finally:
            engine.dispose()


@contextmanager
def postgres_engine(base_url: str) -> Iterator[Engine]:
    """A scratch schema, dropped afterwards."""
    schema = f"herald_bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(base_url, pool_size=1)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base_url else "?"
    engine = make_engine(f"{base_url}{sep}options={quote(f'-csearch_path={schema}', safe='')}")
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--postgres", default=os.environ.get("HERALD_BENCH_DATABASE_URL")
                        or os.environ.get("HERALD_TEST_DATABASE_URL"),
                        help="PostgreSQL URL (default $HERALD_BENCH_DATABASE_URL, else $HERALD_TEST_DATABASE_URL)")
    parser.add_argument("--skip-sqlite", action="store_true")
    args = parser.parse_args()
    report: list[dict[str, Any]] = []
    if not args.skip_sqlite:
        with sqlite_engine() as engine:
            report.append(measure("SQLite", engine, args.recipients, args.runs))
    if args.postgres:
        with postgres_engine(args.postgres) as engine:
            report.append(measure("PostgreSQL", engine, args.recipients, args.runs))
    else:
        print("PostgreSQL skipped: pass --postgres URL or set HERALD_BENCH_DATABASE_URL", file=sys.stderr)
    print(json.dumps(report, indent=2))
    for r in report:
        print(f"{r['backend']}: {r['decisions_per_s']:,} decisions/s (median of {r['runs']}; min {r['min']:,}, "
              f"max {r['max']:,}) for {r['recipients']:,} recipients; reference {r['reference_rows_per_s']:,} "
              f"rows/s; ratio {r['ratio']}; goal 50,000: {'met' if r['goal_met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
