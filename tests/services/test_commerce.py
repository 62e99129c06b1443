"""services/commerce.apply on SQLite and PostgreSQL: typed store objects land as rows with their
values, replays and older versions change nothing, refunds and aggregates add up, the checkout an
order completes is marked, commerce events exist once, and a fulfilment for an unknown order
changes nothing at all."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select

from herald.db.tables import (
    checkouts,
    consent_records,
    contacts,
    events,
    fulfillments,
    order_lines,
    orders,
    products,
    refunds,
)
from herald.domain.commerce import (
    CheckoutData,
    CustomerData,
    FulfillmentData,
    LineData,
    OrderData,
    ProductData,
    RefundData,
)
from herald.domain.connectors import BadPayload
from herald.services import commerce
from tests.services.support import Shop, all_rows, contact_row, make_shop

T0 = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)


@pytest.fixture
def shop(engine: Engine) -> Shop:
    return make_shop(engine, T0)


def buyer(**over: object) -> CustomerData:
    values: dict[str, object] = {"external_id": "c-1", "email": "Ana@Example.com", "phone": "030 1234567",
                                 "first_name": "Ana", "last_name": "Lima", "country": "DE", "language": "de",
                                 "email_marketing": True, "sms_marketing": False, "consent_at": T0,
                                 "source_updated_at": T0}
    values.update(over)
    return CustomerData(**values)  # type: ignore[arg-type]


def order(external_id: str = "1001", *, total: int = 19900, updated: datetime = T0, **over: object) -> OrderData:
    values: dict[str, object] = {
        "external_id": external_id, "currency": "USD", "placed_at": T0 - timedelta(minutes=5), "customer": buyer(),
        "number": f"#{external_id}", "subtotal_minor": total, "discount_minor": 1000, "shipping_minor": 1000,
        "tax_minor": 0, "total_minor": total, "discount_codes": ["WELCOME10"], "financial_status": "paid",
        "shipping_country": "US", "checkout_token": f"tok-{external_id}", "status_url": "https://s.example/st",
        "lines": [LineData("IPod Nano", 1, total, total, "li-1", "p-1", "v-1", "IPOD-342-N")],
        "source_updated_at": updated,
    }
    values.update(over)
    return OrderData(**values)  # type: ignore[arg-type]


def apply(engine: Engine, shop: Shop, *objects: object, now: datetime = T0) -> commerce.ApplyReport:
    with engine.begin() as conn:
        return commerce.apply(conn, shop.store, list(objects), now, source="shopify")  # type: ignore[arg-type]


def count(engine: Engine, table: object, *where: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())  # type: ignore[arg-type]


def test_order_lands_with_lines_contact_consent_aggregates_and_one_event(engine: Engine, shop: Shop) -> None:
    report = apply(engine, shop, order())
    assert (report.orders, report.contacts, report.consents, report.problems) == (1, 1, 2, [])
    with engine.connect() as conn:
        row = conn.execute(select(orders)).mappings().one()
        assert (row["external_id"], row["number"], row["currency"], row["total_minor"], row["discount_codes"],
                row["financial_status"], row["shipping_country"], row["refunded_minor"]) == (
            "1001", "#1001", "USD", 19900, ["WELCOME10"], "paid", "US", 0)
        assert row["placed_at"] == T0 - timedelta(minutes=5)
        line = conn.execute(select(order_lines)).mappings().one()
        assert (line["title"], line["sku"], line["quantity"], line["unit_price_minor"]) == ("IPod Nano", "IPOD-342-N",
                                                                                           1, 19900)
        person = contact_row(conn, row["contact_id"])
        assert (person["email"], person["phone"], person["first_name"], person["country"]) == (
            "Ana@example.com", "+49301234567", "Ana", "DE")
        assert (person["orders_count"], person["total_spent"], person["last_order_at"]) == (
            1, {"USD": 19900}, T0 - timedelta(minutes=5))
        consent = {(r["channel"], r["state"]) for r in all_rows(conn, consent_records)}
        assert consent == {("email", "granted"), ("sms", "withdrawn")}
        event = conn.execute(select(events)).mappings().one()
        assert (event["name"], event["contact_id"]) == ("Order Completed", row["contact_id"])
        assert event["source"] == "shopify"
        assert event["properties"]["total"] == "199.00" and event["properties"]["order_id"] == row["id"]


def test_replay_changes_nothing_and_an_older_version_never_wins(engine: Engine, shop: Shop) -> None:
    apply(engine, shop, order(updated=T0))
    with engine.connect() as conn:
        before = (all_rows(conn, orders), all_rows(conn, order_lines), all_rows(conn, contacts))
    again = apply(engine, shop, order(updated=T0), now=T0 + timedelta(hours=1))
    assert (again.written, again.consents, again.unchanged) == (0, 0, 1)
    older = apply(engine, shop, order(total=500, updated=T0 - timedelta(days=1)), now=T0 + timedelta(hours=2))
    assert older.orders == 0
    with engine.connect() as conn:
        assert (all_rows(conn, orders), all_rows(conn, order_lines), all_rows(conn, contacts)) == before
    newer = apply(engine, shop, order(total=25000, updated=T0 + timedelta(days=1),
                                      lines=[LineData("Case", 2, 12500, 25000)]), now=T0 + timedelta(hours=3))
    assert newer.orders == 1
    with engine.connect() as conn:
        assert conn.execute(select(orders.c.total_minor)).scalar_one() == 25000
        assert [r["title"] for r in all_rows(conn, order_lines)] == ["Case"]
    assert count(engine, events) == 1


def test_changed_lines_alone_rewrite_the_order(engine: Engine, shop: Shop) -> None:
    apply(engine, shop, order())
    report = apply(engine, shop, order(lines=[LineData("IPod Nano", 2, 9950, 19900, "li-1")]))
    assert report.orders == 1
    with engine.connect() as conn:
        assert [(r["quantity"], r["unit_price_minor"]) for r in all_rows(conn, order_lines)] == [(2, 9950)]


def test_refunds_cancellation_and_aggregates(engine: Engine, shop: Shop) -> None:
    apply(engine, shop, order("1001", total=10000), order("1002", total=5000, customer=buyer()))
    refund = RefundData("r-1", "1001", 2500, "USD", T0 + timedelta(days=1), "damaged")
    first = apply(engine, shop, refund)
    again = apply(engine, shop, refund)
    assert (first.refunds, again.refunds, again.unchanged) == (1, 0, 1)
    with engine.connect() as conn:
        assert conn.execute(select(orders.c.refunded_minor).where(orders.c.external_id == "1001")).scalar_one() == 2500
        contact_id = conn.execute(select(orders.c.contact_id).where(orders.c.external_id == "1001")).scalar_one()
        assert contact_row(conn, contact_id)["total_spent"] == {"USD": 12500}
        assert contact_row(conn, contact_id)["orders_count"] == 2
    # A later order payload that does not know about the refund does not undo it.
    apply(engine, shop, order("1001", total=10000, refunded_minor=0, updated=T0 + timedelta(days=2)))
    apply(engine, shop, order("1002", total=5000, cancelled_at=T0 + timedelta(days=2), updated=T0 + timedelta(days=2)))
    with engine.connect() as conn:
        assert conn.execute(select(orders.c.refunded_minor).where(orders.c.external_id == "1001")).scalar_one() == 2500
        person = contact_row(conn, contact_id)
        assert (person["orders_count"], person["total_spent"]) == (1, {"USD": 7500})
        names = sorted(r["name"] for r in all_rows(conn, events))
    assert names == ["Order Cancelled", "Order Completed", "Order Completed", "Order Refunded"]


def test_checkout_is_completed_by_its_order_in_either_arrival_order(engine: Engine, shop: Shop) -> None:
    cart = CheckoutData("chk-1", "USD", T0 - timedelta(hours=2), buyer(), token="tok-1001", total_minor=19900,
                        recovery_url="https://s.example/cart/recover?key=1",
                        lines=[LineData("IPod Nano", 1, 19900, 19900)], source_updated_at=T0 - timedelta(hours=2))
    apply(engine, shop, cart)
    with engine.connect() as conn:
        row = conn.execute(select(checkouts)).mappings().one()
        assert (row["completed_at"], row["order_id"], row["email"]) == (None, None, "Ana@example.com")
        assert row["recovery_url"] == "https://s.example/cart/recover?key=1"
        assert contact_row(conn, row["contact_id"])["last_checkout_at"] == T0 - timedelta(hours=2)
    apply(engine, shop, order("1001"))
    with engine.connect() as conn:
        row = conn.execute(select(checkouts)).mappings().one()
        order_id = conn.execute(select(orders.c.id)).scalar_one()
        assert (row["order_id"], row["completed_at"]) == (order_id, T0 - timedelta(minutes=5))
    # The other way round: an order first, then its checkout's (late) update.
    apply(engine, shop, order("1002"))
    late = CheckoutData("chk-2", "USD", T0 - timedelta(hours=1), None, token="tok-1002")
    apply(engine, shop, late)
    with engine.connect() as conn:
        assert conn.execute(select(checkouts.c.order_id).where(checkouts.c.external_id == "chk-2")).scalar_one()
    assert count(engine, events, events.c.name == "Checkout Started") == 2


def test_fulfilment_for_an_unknown_order_writes_nothing(engine: Engine, shop: Shop) -> None:
    parcel = FulfillmentData("f-1", "1001", "success", None, "UPS", ["1Z2345"], ["https://ups.example/1Z2345"])
    with pytest.raises(commerce.MissingOrder, match="1001"):
        apply(engine, shop, buyer(), parcel)
    assert count(engine, contacts) == 0
    apply(engine, shop, order("1001"))
    report = apply(engine, shop, parcel)
    assert report.fulfillments == 1
    with engine.connect() as conn:
        row = conn.execute(select(fulfillments)).mappings().one()
    assert (row["tracking_company"], row["tracking_numbers"], row["status"]) == ("UPS", ["1Z2345"], "success")
    assert apply(engine, shop, parcel).fulfillments == 0
    assert count(engine, events, events.c.name == "Fulfillment Created") == 1


def test_fulfilment_embedded_in_its_order_needs_no_wait(engine: Engine, shop: Shop) -> None:
    parcel = FulfillmentData("f-9", "1001", "success", tracking_numbers=["X"])
    apply(engine, shop, order("1001", fulfillments=[parcel], fulfillment_status="fulfilled"))
    assert count(engine, fulfillments) == 1


def test_products_upsert_and_guest_orders(engine: Engine, shop: Shop) -> None:
    shirt = ProductData("p-1", "Shirt", "shirt", "https://s.example/products/shirt", None, "Acme", "Tops", "active",
                        2500, "USD", ["summer"], [{"external_id": "v-1", "title": "S", "sku": "SH-S",
                                                   "price_minor": 2500}], T0)
    assert apply(engine, shop, shirt).products == 1
    assert apply(engine, shop, shirt).products == 0
    guest = order("2001", customer=CustomerData(first_name="No", last_name="Contact"))
    report = apply(engine, shop, guest)
    assert report.orders == 1 and report.contacts == 0
    with engine.connect() as conn:
        assert conn.execute(select(orders.c.contact_id).where(orders.c.external_id == "2001")).scalar_one() is None
        assert conn.execute(select(products.c.variants)).scalar_one()[0]["sku"] == "SH-S"


def test_invalid_values_are_reported_and_the_rest_lands(engine: Engine, shop: Shop) -> None:
    report = apply(engine, shop, buyer(phone="not a phone"))
    assert report.contacts == 1 and any("phone" in p for p in report.problems)
    with pytest.raises(BadPayload, match="order id"):
        apply(engine, shop, order("x" * 65))
    assert count(engine, refunds) == 0


def test_an_older_customer_version_changes_nothing(engine: Engine, shop: Shop) -> None:
    apply(engine, shop, buyer(first_name="Anna", source_updated_at=T0 + timedelta(hours=1)))
    stale = apply(engine, shop, buyer(first_name="Ana", email="old@example.com", tags=["vip"],
                                      source_updated_at=T0), now=T0 + timedelta(hours=2))
    assert (stale.contacts, stale.unchanged) == (0, 1)
    with engine.connect() as conn:
        person = conn.execute(select(contacts)).mappings().one()
        assert (person["first_name"], person["email"], person["tags"]) == ("Anna", "Ana@example.com", [])
    # An order embedding the stale customer still lands on that contact.
    apply(engine, shop, order(customer=buyer(first_name="Ana", source_updated_at=T0)))
    newer = apply(engine, shop, buyer(first_name="Annabel", source_updated_at=T0 + timedelta(days=1)))
    assert newer.contacts == 1
    with engine.connect() as conn:
        person = conn.execute(select(contacts)).mappings().one()
        assert (person["first_name"], person["orders_count"]) == ("Annabel", 1)


def test_each_channel_s_consent_is_dated_by_its_own_statement(engine: Engine, shop: Shop) -> None:
    apply(engine, shop, buyer(consent_at=T0 - timedelta(days=1), sms_consent_at=T0 - timedelta(days=30)))
    with engine.connect() as conn:
        dated = {r["channel"]: r["recorded_at"] for r in all_rows(conn, consent_records)}
    assert dated == {"email": T0 - timedelta(days=1), "sms": T0 - timedelta(days=30)}
    # A withdrawal stated between the two does not lose to the older SMS grant when replayed.
    apply(engine, shop, buyer(sms_marketing=True, consent_at=T0 - timedelta(days=1),
                              sms_consent_at=T0 - timedelta(days=40)))
    with engine.connect() as conn:
        states = [(r["channel"], r["state"]) for r in all_rows(conn, consent_records)]
    assert states == [("email", "granted"), ("sms", "withdrawn")]


def test_fulfilment_beside_its_unchanged_order_in_one_batch(engine: Engine, shop: Shop) -> None:
    apply(engine, shop, order("1001"))
    report = apply(engine, shop, order("1001"), FulfillmentData("f-2", "1001", "success", tracking_numbers=["Z"]))
    assert (report.orders, report.fulfillments) == (0, 1)
    with engine.connect() as conn:
        assert conn.execute(select(fulfillments.c.order_id)).scalar_one() == conn.execute(
            select(orders.c.id)).scalar_one()
