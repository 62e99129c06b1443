"""Demo data: one workspace with two stores and a few hundred realistic contacts across the
countries cross-border sellers ship to, with consent, orders and events. Deterministic."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import phonenumbers
from sqlalchemy import Connection, insert, select

from herald.db.tables import (
    consent_records,
    contact_identities,
    contact_stores,
    contacts,
    events,
    order_lines,
    orders,
    stores,
    workspaces,
)
from herald.domain.auth import Principal
from herald.domain.ids import new_id
from herald.services import identity, templates

DEMO_SLUG = "demo"

_ORDER_MJML = """<mjml><mj-body background-color="#f4f4f4"><mj-section background-color="#ffffff"><mj-column>
  <mj-text font-size="20px">{greeting}, {{{{ contact.first_name | default: "{friend}" }}}}!</mj-text>
  <mj-text>{received} <b>{{{{ order.name }}}}</b>.</mj-text>
  <mj-table>{{% for line in order.lines %}}<tr><td>{{{{ line.quantity }}}} x {{{{ line.title }}}}</td>
    <td align="right">{{{{ line.price }}}} {{{{ order.currency }}}}</td></tr>{{% endfor %}}
    <tr><td><b>Total</b></td><td align="right"><b>{{{{ order.total }}}} {{{{ order.currency }}}}</b></td></tr>
  </mj-table>
  <mj-button href="{{{{ order.status_url }}}}">{button}</mj-button>
  <mj-text font-size="11px" color="#777">{{{{ store.name }}}} · {{{{ store.address }}}}</mj-text>
</mj-column></mj-section></mj-body></mjml>"""
DEMO_TEMPLATE = {
    "en": {"subject": "Order {{ order.name }} confirmed", "body": _ORDER_MJML.format(
        greeting="Thank you", friend="friend", received="We received your order", button="View your order")},
    "fr": {"subject": "Commande {{ order.name }} confirmée", "body": _ORDER_MJML.format(
        greeting="Merci", friend="cher client", received="Nous avons bien reçu votre commande",
        button="Voir votre commande")},
}

# (country, language, zone, weight)
MARKETS = [
    ("US", "en-US", "America/New_York", 30), ("US", "en-US", "America/Los_Angeles", 10),
    ("BR", "pt-BR", "America/Sao_Paulo", 15), ("DE", "de-DE", "Europe/Berlin", 10),
    ("FR", "fr-FR", "Europe/Paris", 8), ("GB", "en-GB", "Europe/London", 8),
    ("IN", "en-IN", "Asia/Kolkata", 7), ("AE", "ar-AE", "Asia/Dubai", 5),
    ("MX", "es-MX", "America/Mexico_City", 4), ("JP", "ja-JP", "Asia/Tokyo", 3),
]
FIRST = ["Ana", "Lucas", "Emma", "Noah", "Sofia", "Liam", "Mia", "Mateo", "Aarav", "Fatima",
         "Hiro", "Chloe", "Jonas", "Léa", "Omar", "Isabella", "Ethan", "Valentina", "Yuki", "Priya"]
LAST = ["Souza", "Smith", "Müller", "Martin", "Patel", "Garcia", "Tanaka", "Brown", "Silva",
        "Khan", "Dubois", "Schmidt", "Rossi", "Kumar", "Haddad", "Lopez", "Wilson", "Sato"]
PRODUCTS = [("Trail Runner 2", 12900), ("Merino Hoodie", 8900), ("Down Vest", 15900),
            ("Headlamp Pro", 4900), ("Dry Bag 20L", 2900), ("Linen Throw", 7900),
            ("Ceramic Vase", 5400), ("Candle Trio", 3600)]


def first_store(conn: Connection, workspace_id: str) -> str:
    """The demo's Shopify store (the first one made)."""
    return str(conn.execute(select(stores.c.id).where(stores.c.workspace_id == workspace_id)
                            .order_by(stores.c.id)).scalars().first())


def exists(conn: Connection) -> str | None:
    return conn.execute(select(workspaces.c.id).where(workspaces.c.slug == DEMO_SLUG)).scalar_one_or_none()


def load(conn: Connection, *, now: datetime, contact_count: int = 300, seed: int = 42) -> dict[str, Any]:
    rng = random.Random(seed)
    ws = new_id("ws")
    conn.execute(insert(workspaces).values(id=ws, slug=DEMO_SLUG, name="Demo Seller", settings={},
                                           created_at=now))
    shop = {"id": new_id("st"), "workspace_id": ws, "name": "Aurora Outdoor", "platform": "shopify",
            "domain": "aurora-outdoor.example", "currency": "USD", "timezone": "America/New_York",
            "email_from": "orders@aurora-outdoor.example", "email_from_name": "Aurora Outdoor",
            "postal_address": "Aurora Outdoor Inc., 200 Summit Ave, Boulder, CO 80302, USA", "created_at": now}
    woo = {"id": new_id("st"), "workspace_id": ws, "name": "Maison Lumière", "platform": "woocommerce",
           "domain": "maison-lumiere.example", "currency": "EUR", "timezone": "Europe/Paris",
           "email_from": "bonjour@maison-lumiere.example", "email_from_name": "Maison Lumière",
           "postal_address": "Maison Lumière SAS, 12 rue de la Paix, 75002 Paris, France", "created_at": now}
    conn.execute(insert(stores), [shop, woo])
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in
                                              ("contacts", "ids", "links", "consent", "orders", "lines", "events")}
    for i in range(contact_count):
        _person(rng, i, ws, [shop, woo], now, rows)
    conn.execute(insert(contacts), rows["contacts"])
    conn.execute(insert(contact_identities), rows["ids"])
    conn.execute(insert(contact_stores), rows["links"])
    conn.execute(insert(consent_records), rows["consent"])
    if rows["orders"]:
        conn.execute(insert(orders), rows["orders"])
        conn.execute(insert(order_lines), rows["lines"])
    conn.execute(insert(events), rows["events"])
    identity.recompute_aggregates(conn, [c["id"] for c in rows["contacts"]], now)
    templates.create_template(conn, Principal("demo", ws, None), name="order-confirmation", channel="email",
                              purpose="transactional", default_language="en", variants=DEMO_TEMPLATE,
                              store_id=None, now=now)
    return {"workspace_id": ws, "store_ids": [shop["id"], woo["id"]], "contacts": contact_count,
            "orders": len(rows["orders"])}


def _person(rng: random.Random, i: int, ws: str, shops: list[dict[str, Any]], now: datetime,
            rows: dict[str, list[dict[str, Any]]]) -> None:
    country, language, zone, _ = rng.choices(MARKETS, weights=[m[3] for m in MARKETS])[0]
    first, last = rng.choice(FIRST), rng.choice(LAST)
    cid = new_id("ct")
    email = f"{_ascii(first)}.{_ascii(last)}.{i}@example.com".lower()
    phone = _mobile(rng, country, _used_phones(rows))
    created = now - timedelta(days=rng.randint(1, 720), minutes=rng.randint(0, 1440))
    rows["contacts"].append({
        "id": cid, "workspace_id": ws, "email": email, "phone": phone, "first_name": first,
        "last_name": last, "country": country, "language": language, "timezone": zone,
        "attributes": {"vip": rng.random() < 0.1, "source": rng.choice(["checkout", "popup", "import"])},
        "tags": rng.sample(["newsletter", "repeat-buyer", "wholesale", "review-writer"], k=rng.randint(0, 2)),
        "created_at": created, "updated_at": created})
    for kind, value in (("email", email), ("phone", phone)):
        if value:
            rows["ids"].append({"id": new_id("cid"), "workspace_id": ws, "contact_id": cid, "kind": kind,
                                "namespace": "", "value": value, "created_at": created})
    linked = [s for s in shops if rng.random() < 0.6] or [rng.choice(shops)]
    for store in linked:
        rows["links"].append({"contact_id": cid, "store_id": store["id"], "workspace_id": ws,
                              "created_at": created})
        _consent(rng, ws, cid, store["id"], created, rows)
        _orders(rng, ws, cid, store, created, now, country, rows)


def _consent(rng: random.Random, ws: str, cid: str, store_id: str, at: datetime,
             rows: dict[str, list[dict[str, Any]]]) -> None:
    for channel in ("email", "sms", "whatsapp"):
        if rng.random() < 0.7:
            rows["consent"].append({
                "workspace_id": ws, "contact_id": cid, "store_id": store_id, "channel": channel,
                "purpose": "marketing", "state": "granted" if rng.random() < 0.85 else "withdrawn",
                "source": "checkout", "wording_version": "2026-01", "ip": None, "user_agent": None,
                "recorded_at": at})


def _orders(rng: random.Random, ws: str, cid: str, store: dict[str, Any], created: datetime,
            now: datetime, country: str, rows: dict[str, list[dict[str, Any]]]) -> None:
    for _ in range(rng.choices([0, 1, 2, 4], weights=[40, 35, 15, 10])[0]):
        oid = new_id("ord")
        placed = created + timedelta(days=rng.randint(0, max((now - created).days, 1)))
        placed = min(placed, now)
        lines = rng.sample(PRODUCTS, k=rng.randint(1, 3))
        subtotal = 0
        for title, price in lines:
            qty = rng.randint(1, 2)
            subtotal += price * qty
            rows["lines"].append({"id": new_id("oln"), "workspace_id": ws, "order_id": oid,
                                  "external_id": None, "product_external_id": None,
                                  "variant_external_id": None, "sku": title[:3].upper() + "-01",
                                  "title": title, "quantity": qty, "unit_price_minor": price,
                                  "total_minor": price * qty})
        shipping = 0 if subtotal > 10000 else 900
        rows["orders"].append({
            "id": oid, "workspace_id": ws, "store_id": store["id"], "contact_id": cid,
            "external_id": str(5_000_000 + len(rows["orders"])), "number": f"#{1001 + len(rows['orders'])}",
            "currency": store["currency"], "subtotal_minor": subtotal, "discount_minor": 0,
            "shipping_minor": shipping, "tax_minor": 0, "total_minor": subtotal + shipping,
            "discount_codes": [], "financial_status": "paid", "fulfillment_status":
            rng.choice(["fulfilled", "fulfilled", None]), "shipping_country": country,
            "placed_at": placed, "cancelled_at": None, "created_at": placed, "updated_at": placed})
        rows["events"].append({"id": new_id("evt"), "workspace_id": ws, "store_id": store["id"],
                               "contact_id": cid, "name": "Order Completed", "source": "demo",
                               "dedupe_key": oid, "properties": {"order_id": oid, "total_minor": subtotal + shipping},
                               "occurred_at": placed, "received_at": placed})


def _mobile(rng: random.Random, country: str, used: set[str]) -> str | None:
    example = phonenumbers.example_number_for_type(country, phonenumbers.PhoneNumberType.MOBILE)
    if example is None:
        return None
    digits = str(example.national_number)
    for _ in range(20):
        tail = "".join(str(rng.randint(0, 9)) for _ in range(4))
        candidate = phonenumbers.PhoneNumber(country_code=example.country_code,
                                             national_number=int(digits[:-4] + tail))
        e164 = phonenumbers.format_number(candidate, phonenumbers.PhoneNumberFormat.E164)
        if phonenumbers.is_valid_number(candidate) and e164 not in used:
            used.add(e164)
            return e164
    return None


def _used_phones(rows: dict[str, list[dict[str, Any]]]) -> set[str]:
    return {r["value"] for r in rows["ids"] if r["kind"] == "phone"}


def _ascii(name: str) -> str:
    return name.replace("é", "e").replace("ü", "u")
