"""SMPP receipts and incoming SMS consumed while a worker runs (worker/smpp_receipts.py), against
the smpp34 SMSC and the minimal RawSmsc on 127.0.0.1, on SQLite and PostgreSQL: a message sent by
the send job is marked delivered by its receipt on the same bind; an inbound STOP suppresses the
number and queues the reply; a changed, disabled or sandboxed provider row has no consumer (its
old object unbinds)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from herald.bootstrap import Container
from herald.db.tables import messages, suppressions
from herald.db.tables import providers as providers_table
from herald.domain.auth import Principal
from herald.services import consent, identity, messaging, providers, sandbox, templates
from herald.worker.kinds import build_worker
from herald.worker.smpp_receipts import ReceiptConsumers
from tests.channels.sms.smsc import RawSmsc, Smsc
from tests.services.support import Shop, make_shop

BUYER = "+4915112345678"
POLLS = 400          # bounded waits on the database: at most POLLS x 0.05 s


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 90))


async def eventually(check: Callable[[], Any], what: str) -> Any:
    for _ in range(POLLS):
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def add_smpp(c: Container, shop: Shop, port: int, **config: Any) -> str:
    settings = {"host": "127.0.0.1", "port": port, "system_id": "herald", "system_type": "HERALD",
                "source_addr": "HeraldShop", "reconnect_min": 0.05, "reconnect_max": 0.2, "connect_timeout": 5,
                "timeout": 2, **config}
    with c.engine.begin() as conn:
        row = providers.add_provider(conn, c.adapters, c.master_key, shop.workspace_id, channel="sms", kind="smpp",
                                     name="carrier", config=settings, secrets={"password": "secret"}, priority=0,
                                     now=c.clock.now())
    return str(row["id"])


def buyer(c: Container, shop: Shop) -> str:
    with c.engine.begin() as conn:
        person, problems = identity.normalize_person(phone=BUYER)
        assert not problems
        contact_id = identity.resolve(conn, shop.workspace_id, shop.store.id, person, c.clock.now()).contact_id
        consent.record_many(conn, shop.workspace_id, [consent.ConsentChange(
            contact_id=contact_id, store_id=None, channel="sms", purpose="marketing", state="granted", source="test",
            recorded_at=c.clock.now() - timedelta(days=1))])
    return contact_id


def queue_shipping_notice(c: Container, shop: Shop, contact_id: str) -> str:
    with c.engine.begin() as conn:
        tpl = templates.create_template(conn, Principal("test", shop.workspace_id, None), name="shipped",
                                        channel="sms", purpose="transactional", default_language="en",
                                        variants={"en": {"body": "Your order shipped"}}, store_id=None,
                                        now=c.clock.now())
        return messaging.queue_message(conn, workspace_id=shop.workspace_id, channel="sms", template=tpl, to=BUYER,
                                       now=c.clock.now(), store_id=shop.store.id, contact_id=contact_id)


def message(c: Container, message_id: str) -> dict[str, Any]:
    with c.engine.begin() as conn:
        return dict(conn.execute(select(messages).where(messages.c.id == message_id)).mappings().one())


def receipt(smsc_id: str, stat: str) -> bytes:
    return (f"id:{smsc_id} sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 stat:{stat} err:000 "
            "text:Your order").encode()


def test_the_running_worker_applies_receipts_and_a_stop_on_the_sending_bind(container: Container) -> None:
    shop = make_shop(container.engine, container.clock.now())
    contact_id = buyer(container, shop)
    from_buyer = {"source_addr": BUYER[1:], "source_addr_ton": 1, "source_addr_npi": 1}

    async def scenario() -> tuple[str, list[Any], list[Any], int]:
        async with Smsc() as smsc:
            provider_id = add_smpp(container, shop, smsc.port)
            message_id = queue_shipping_notice(container, shop, contact_id)
            stop = asyncio.Event()
            worker = build_worker(container, poll_seconds=0.05)
            running = asyncio.create_task(worker.run(stop))
            try:
                sent = await eventually(lambda: message(container, message_id)["status"] == "sent", "the send")
                assert sent and smsc.submitted[0].short_message == b"Your order shipped"
                assert message(container, message_id)["provider_message_id"] == "smsc-1"
                esme = await smsc.bound()
                await smsc.deliver(esme, receipt("smsc-1", "DELIVRD"), esm_class=0x04, **from_buyer)
                await eventually(lambda: message(container, message_id)["status"] == "delivered", "the receipt")
                await smsc.deliver(esme, b"STOP", destination_addr="HeraldShop", **from_buyer)

                def replies() -> list[Any]:
                    with container.engine.begin() as conn:
                        return list(conn.execute(select(messages).where(
                            messages.c.id != message_id)).mappings())
                reply = await eventually(replies, "the STOP reply")
                with container.engine.begin() as conn:
                    suppressed = list(conn.execute(select(suppressions.c.channel, suppressions.c.reason)
                                                   .where(suppressions.c.address == BUYER)))
                return provider_id, suppressed, reply, len(smsc.sessions)
            finally:
                stop.set()
                await running

    _provider_id, suppressed, reply, binds = run(scenario)
    assert [tuple(s) for s in suppressed] == [("sms", "unsubscribed")]
    assert [(r["channel"], r["to_address"], r["purpose"]) for r in reply] == [("sms", BUYER, "transactional")]
    assert "STOP" in reply[0]["context"]["text"] or "unsubscribed" in reply[0]["context"]["text"]
    assert binds == 1      # the send and the receipts shared one provider object, one bind


def test_changed_disabled_and_sandboxed_rows_stop_their_consumer(container: Container) -> None:
    shop = make_shop(container.engine, container.clock.now())

    async def scenario() -> None:
        async with RawSmsc() as smsc:
            provider_id = add_smpp(container, shop, smsc.port)
            consumers = ReceiptConsumers(container.engine, container.messaging.providers, container.clock.now)
            try:
                await consumers.rescan()
                assert consumers.provider_ids == [provider_id]
                await bound(consumers, provider_id, smsc, 1)         # events() binds even with nothing to send

                await consumers.rescan()                             # unchanged: the same consumer
                assert len(smsc.binds) == 1 and smsc.count(0x06) == 0

                touch(container, provider_id, updated_at=container.clock.now() + timedelta(seconds=1))
                await consumers.rescan()                             # a new object: the old one unbinds
                assert consumers.provider_ids == [provider_id] and smsc.count(0x06) == 1
                await bound(consumers, provider_id, smsc, 2)

                touch(container, provider_id, enabled=False)
                await consumers.rescan()
                assert consumers.provider_ids == [] and smsc.count(0x06) == 2

                touch(container, provider_id, enabled=True, updated_at=container.clock.now() + timedelta(seconds=2))
                with container.engine.begin() as conn:
                    sandbox.set_enabled(conn, shop.workspace_id, True)
                await consumers.rescan()                             # sandbox: real providers are never used
                assert consumers.provider_ids == []
                with container.engine.begin() as conn:
                    sandbox.set_enabled(conn, shop.workspace_id, False)
                await consumers.rescan()
                assert consumers.provider_ids == [provider_id]
                await bound(consumers, provider_id, smsc, 3)
            finally:
                await consumers.stop_all()
            assert consumers.provider_ids == [] and smsc.count(0x06) == 3
            await container.aclose_providers()

    run(scenario)


async def bound(consumers: ReceiptConsumers, provider_id: str, smsc: RawSmsc, count: int) -> None:
    """The SMSC saw the `count`-th bind and the consumer's provider object is bound (closing it
    while its bind is still being answered is another matter: not what these tests are about)."""
    await smsc.until(lambda: len(smsc.binds) == count)
    source = consumers._consumers[provider_id].source
    await eventually(lambda: getattr(source, "binds", 0) == 1, "the provider object bound")


def touch(c: Container, provider_id: str, **values: Any) -> None:
    with c.engine.begin() as conn:
        conn.execute(update(providers_table).where(providers_table.c.id == provider_id).values(**values))
