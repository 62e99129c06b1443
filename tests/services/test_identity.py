"""Identity resolution (services/identity.py) on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, func, insert, select

from herald.db.bulk import insert_many, select_in
from herald.db.tables import (
    checkouts,
    consent_records,
    contact_identities,
    contact_merges,
    contact_stores,
    contacts,
    events,
    messages,
    orders,
)
from herald.domain import contacts as rules
from herald.domain.errors import InvalidInput, NotFound
from herald.domain.ids import has_prefix, new_id
from herald.services import consent, identity
from herald.services.identity import Person, normalize_person, resolve, resolve_many, store_namespace
from tests.services.support import Shop, all_rows, contact_row, make_shop

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def shop(engine: Engine) -> Shop:
    return make_shop(engine, NOW)


def person(**kwargs: Any) -> Person:
    made, problems = normalize_person(**kwargs)
    assert problems == []
    return made


def identities_of(conn: Connection, contact_id: str) -> set[tuple[str, str, str]]:
    t = contact_identities.c
    return {(r.kind, r.namespace, r.value) for r in conn.execute(
        select(t.kind, t.namespace, t.value).where(t.contact_id == contact_id))}


def snapshot(conn: Connection) -> list[list[dict[str, Any]]]:
    return [all_rows(conn, t) for t in (contacts, contact_identities, contact_stores)]


def test_store_namespace_is_lower_cased() -> None:
    assert store_namespace("st_01HZABC") == "store:st_01hzabc"


def test_new_person_becomes_a_contact_with_all_identities(engine: Engine, shop: Shop) -> None:
    ns = store_namespace(shop.store.id)
    p = person(external=[(ns, " 123 ")], email="Ana@Example.COM", phone="(11) 98765-4321",
               profile={"first_name": " Ana ", "country": "br", "language": "pt_br"}, tags=["vip"],
               attributes={"size": "M"})
    with engine.begin() as conn:
        got = resolve(conn, shop.workspace_id, shop.store.id, p, NOW)
        assert got.created and got.changed and got.conflicts == []
        row = contact_row(conn, got.contact_id)
        assert (row["email"], row["phone"], row["first_name"], row["country"], row["language"]) == (
            "Ana@example.com", "+5511987654321", "Ana", "BR", "pt-BR")
        assert row["tags"] == ["vip"] and row["attributes"] == {"size": "M"}
        assert row["created_at"] == row["updated_at"] == NOW
        assert identities_of(conn, got.contact_id) == {
            ("external", ns, "123"), ("email", "", "Ana@example.com"), ("phone", "", "+5511987654321")}
        links = all_rows(conn, contact_stores)
        assert [(r["contact_id"], r["store_id"]) for r in links] == [(got.contact_id, shop.store.id)]


def test_precedence_external_then_email_then_phone(engine: Engine, shop: Shop) -> None:
    with engine.begin() as conn:
        by_ext, by_email, by_phone = resolve_many(conn, shop.workspace_id, None, [
            person(external=[("crm", "1")]), person(email="b@example.com"), person(phone="+14155550123")], NOW)
        assert len({by_ext.contact_id, by_email.contact_id, by_phone.contact_id}) == 3
        everything = person(external=[("crm", "1")], email="b@example.com", phone="+14155550123")
        email_phone = person(email="b@example.com", phone="+14155550123")
        first, second, third = resolve_many(conn, shop.workspace_id, None, [
            everything, email_phone, person(phone="+1 415 555 0123")], NOW)
        assert (first.contact_id, first.conflicts) == (by_ext.contact_id, ["email", "phone"])
        assert (second.contact_id, second.conflicts) == (by_email.contact_id, ["phone"])
        assert (third.contact_id, third.conflicts) == (by_phone.contact_id, [])
        # conflicts are never moved: each identity stays with its contact, and columns follow
        assert identities_of(conn, by_ext.contact_id) == {("external", "crm", "1")}
        assert identities_of(conn, by_email.contact_id) == {("email", "", "b@example.com")}
        assert identities_of(conn, by_phone.contact_id) == {("phone", "", "+14155550123")}
        assert contact_row(conn, by_ext.contact_id)["email"] is None
        assert not first.changed and not second.changed and not third.changed


def test_conflicting_external_ids_are_reported_by_namespace(engine: Engine, shop: Shop) -> None:
    with engine.begin() as conn:
        a, b = resolve_many(conn, shop.workspace_id, None, [person(external=[("crm", "1")]),
                                                            person(external=[("erp", "5")])], NOW)
        got = resolve(conn, shop.workspace_id, None, person(external=[("web", "9"), ("crm", "1"), ("erp", "5")]),
                      NOW)
        assert (got.contact_id, got.created, got.changed) == (a.contact_id, False, True)
        assert got.conflicts == ["external:erp"]
        assert identities_of(conn, a.contact_id) == {("external", "web", "9"), ("external", "crm", "1")}
        assert identities_of(conn, b.contact_id) == {("external", "erp", "5")}


def test_matched_contact_gains_free_identities_and_profile(engine: Engine, shop: Shop) -> None:
    with engine.begin() as conn:
        made = resolve(conn, shop.workspace_id, shop.store.id, person(
            email="c@example.com", profile={"first_name": "Cy", "last_name": "Old"}, tags=["a"],
            attributes={"k": 1, "keep": True}), NOW)
        later = NOW + timedelta(hours=1)
        got = resolve(conn, shop.workspace_id, shop.other.id, person(
            email="c@example.com", phone="+33612345678", external=[("crm", "7")],
            profile={"last_name": "New"}, tags=["b", "a"], attributes={"k": 2}), later)
        assert (got.contact_id, got.created, got.changed, got.conflicts) == (made.contact_id, False, True, [])
        row = contact_row(conn, made.contact_id)
        assert (row["first_name"], row["last_name"], row["phone"]) == ("Cy", "New", "+33612345678")
        assert row["tags"] == ["a", "b"] and row["attributes"] == {"k": 2, "keep": True}
        assert row["updated_at"] == later and row["created_at"] == NOW
        assert identities_of(conn, made.contact_id) == {
            ("email", "", "c@example.com"), ("phone", "", "+33612345678"), ("external", "crm", "7")}
        stores = {r["store_id"] for r in all_rows(conn, contact_stores)}
        assert stores == {shop.store.id, shop.other.id}


def test_only_a_new_store_link_is_a_change(engine: Engine, shop: Shop) -> None:
    with engine.begin() as conn:
        made = resolve(conn, shop.workspace_id, shop.store.id, person(email="s@example.com"), NOW)
        again = resolve(conn, shop.workspace_id, shop.store.id, person(email="s@example.com"), NOW)
        other = resolve(conn, shop.workspace_id, shop.other.id, person(email="s@example.com"), NOW)
        assert (again.changed, other.changed) == (False, True)
        assert made.contact_id == again.contact_id == other.contact_id
        assert contact_row(conn, made.contact_id)["updated_at"] == NOW  # a link is not a profile change


def test_same_identity_twice_in_one_batch_is_one_contact(engine: Engine, shop: Shop) -> None:
    with engine.begin() as conn:
        results = resolve_many(conn, shop.workspace_id, shop.store.id, [
            person(email="d@example.com", profile={"first_name": "Di"}),
            person(email="d@example.com", phone="+4915123456789"),
            person(phone="+49 151 23456789", tags=["t"]),
            person(email="other@example.com"),
        ], NOW)
        assert len({r.contact_id for r in results[:3]}) == 1
        assert results[3].contact_id != results[0].contact_id
        assert [r.created for r in results] == [True, False, False, True]
        assert conn.execute(select(func.count()).select_from(contacts)).scalar_one() == 2
        row = contact_row(conn, results[0].contact_id)
        assert (row["first_name"], row["phone"], row["tags"]) == ("Di", "+4915123456789", ["t"])
        assert conn.execute(select(func.count()).select_from(contact_stores)).scalar_one() == 2


def test_rerun_changes_nothing_and_keeps_updated_at(engine: Engine, shop: Shop) -> None:
    batch = [person(external=[(store_namespace(shop.store.id), str(i))], email=f"u{i}@example.com",
                    profile={"first_name": f"U{i}", "country": "DE"}, tags=["x"], attributes={"i": i})
             for i in range(50)]
    with engine.begin() as conn:
        first = resolve_many(conn, shop.workspace_id, shop.store.id, batch, NOW)
        before = snapshot(conn)
        second = resolve_many(conn, shop.workspace_id, shop.store.id, batch, NOW + timedelta(days=1))
        assert [r.contact_id for r in first] == [r.contact_id for r in second]
        assert not any(r.changed or r.created or r.conflicts for r in second)
        assert snapshot(conn) == before


def test_invalid_phone_is_reported_and_the_person_resolves_by_email(engine: Engine, shop: Shop) -> None:
    p, problems = normalize_person(email="e@example.com", phone="12345", profile={"country": "XX"},
                                   default_country="US")
    assert [f.field for f in problems] == ["country", "phone"]
    assert "country code" not in problems[1].reason  # the default country applied; the number is invalid
    assert p.phone is None and p.email == "e@example.com" and p.profile == {}
    with engine.begin() as conn:
        got = resolve(conn, shop.workspace_id, None, p, NOW)
        assert identities_of(conn, got.contact_id) == {("email", "", "e@example.com")}


def test_normalize_person_uses_the_default_country_and_reports_every_bad_field() -> None:
    p, problems = normalize_person(phone="(415) 555-0123", default_country="us", email="not-an-email",
                                   external=[("Bad NS", "1"), ("crm", "  ")], profile={"shoe": 42},
                                   tags=[""], attributes={"a": 1})
    assert p.phone == "+14155550123" and p.email is None and p.external == [] and p.tags == []
    assert p.attributes == {"a": 1}
    assert sorted(f.field for f in problems) == ["email", "external_ids.Bad NS", "shoe", "tags"]


def test_person_without_identity_is_refused(engine: Engine, shop: Shop) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="person 1 has no identity"):
        resolve_many(conn, shop.workspace_id, None, [person(email="f@example.com"),
                                                     person(profile={"first_name": "Nobody"})], NOW)


def test_losing_an_identity_race_resolves_to_the_winner(engine: Engine, shop: Shop,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A concurrent writer inserts the identity between our read and our insert: the insert does
    nothing (ON CONFLICT), our half-made contact is removed and the batch resolves again."""
    with engine.begin() as conn:
        winner = resolve(conn, shop.workspace_id, None, person(email="race@example.com"), NOW)
        real = identity._owners
        calls = itertools.count()

        def stale_first_read(*args: Any) -> Any:
            return {} if next(calls) == 0 else real(*args)  # the first read predates the winner

        monkeypatch.setattr(identity, "_owners", stale_first_read)
        got = resolve_many(conn, shop.workspace_id, shop.store.id, [
            person(email="race@example.com", phone="+14155550199"), person(email="new@example.com")], NOW)
        assert got[0].contact_id == winner.contact_id and not got[0].created
        assert got[1].created
        assert conn.execute(select(func.count()).select_from(contacts)).scalar_one() == 2
        assert identities_of(conn, winner.contact_id) == {("email", "", "race@example.com"),
                                                          ("phone", "", "+14155550199")}


# ---- merge ------------------------------------------------------------------------------------------
def _facts_for(conn: Connection, shop: Shop, contact_id: str, n: int, total: int, currency: str) -> None:
    ws, store = shop.workspace_id, shop.store.id
    placed = NOW - timedelta(days=n)
    conn.execute(insert(orders).values(id=new_id("ord"), workspace_id=ws, store_id=store, contact_id=contact_id,
                                       external_id=f"o{n}", currency=currency, total_minor=total, placed_at=placed,
                                       created_at=NOW, updated_at=NOW))
    conn.execute(insert(checkouts).values(id=new_id("chk"), workspace_id=ws, store_id=store, contact_id=contact_id,
                                          external_id=f"c{n}", currency=currency, started_at=placed,
                                          created_at=NOW, updated_at=NOW))
    conn.execute(insert(events).values(id=new_id("evt"), workspace_id=ws, store_id=store, contact_id=contact_id,
                                       name="Viewed", source="test", occurred_at=placed, received_at=NOW))
    conn.execute(insert(messages).values(id=new_id("msg"), workspace_id=ws, store_id=store, contact_id=contact_id,
                                         channel="email", purpose="marketing", to_address="x@example.com",
                                         status="sent", created_at=NOW, updated_at=NOW))
    conn.execute(insert(consent_records).values(workspace_id=ws, store_id=store, contact_id=contact_id,
                                                channel="email", purpose="marketing", state="granted",
                                                source="test", recorded_at=placed))


def test_merge_moves_everything_and_is_recorded(engine: Engine, shop: Shop) -> None:
    later = NOW + timedelta(hours=2)
    with engine.begin() as conn:
        keep, gone = resolve_many(conn, shop.workspace_id, shop.store.id, [
            person(email="keep@example.com", profile={"first_name": "Kay"}, tags=["a"], attributes={"x": 1}),
            person(phone="+14155550100", external=[("crm", "5")], profile={"first_name": "Other", "last_name": "Lo"},
                   tags=["b", "a"], attributes={"x": 2, "y": 3}),
        ], NOW)
        resolve(conn, shop.workspace_id, shop.other.id, person(phone="+14155550100"), NOW)
        _facts_for(conn, shop, keep.contact_id, 1, 1000, "USD")
        _facts_for(conn, shop, gone.contact_id, 2, 500, "EUR")
        kept = identity.merge(conn, shop.workspace_id, keep.contact_id, gone.contact_id, reason="same buyer",
                              actor="key_1", now=later)
        assert kept["id"] == keep.contact_id
        assert (kept["email"], kept["phone"], kept["first_name"], kept["last_name"]) == (
            "keep@example.com", "+14155550100", "Kay", "Lo")
        assert kept["tags"] == ["a", "b"] and kept["attributes"] == {"x": 1, "y": 3}
        assert kept["external_ids"] == {"crm": "5"} and set(kept["store_ids"]) == {shop.store.id, shop.other.id}
        assert kept["orders_count"] == 2 and kept["total_spent"] == {"USD": 1000, "EUR": 500}
        assert kept["first_order_at"] == NOW - timedelta(days=2) and kept["last_order_at"] == NOW - timedelta(days=1)
        assert kept["last_checkout_at"] == NOW - timedelta(days=1) and kept["updated_at"] == later
        assert conn.execute(select(contacts.c.id).where(contacts.c.id == gone.contact_id)).first() is None
        assert identities_of(conn, keep.contact_id) == {
            ("email", "", "keep@example.com"), ("phone", "", "+14155550100"), ("external", "crm", "5")}
        for table in (orders, checkouts, events, messages, consent_records):
            owners = {r["contact_id"] for r in all_rows(conn, table)}
            assert owners == {keep.contact_id}, table.name
        record = all_rows(conn, contact_merges)
        assert [(r["kept_contact_id"], r["merged_contact_id"], r["reason"], r["actor"], r["created_at"])
                for r in record] == [(keep.contact_id, gone.contact_id, "same buyer", "key_1", later)]
        # the merged contact's identities now find the kept one
        assert resolve(conn, shop.workspace_id, None, person(phone="+14155550100"), later).contact_id == keep.contact_id


def test_merge_refuses_bad_requests(engine: Engine, shop: Shop) -> None:
    other = make_shop(engine, NOW, slug="someone-else")
    with engine.begin() as conn:
        a, b = resolve_many(conn, shop.workspace_id, None, [person(email="a@example.com"),
                                                            person(email="b@example.com")], NOW)
        foreign = resolve(conn, other.workspace_id, None, person(email="a@example.com"), NOW)
        with pytest.raises(InvalidInput, match="itself"):
            identity.merge(conn, shop.workspace_id, a.contact_id, a.contact_id, reason="r", actor="t", now=NOW)
        with pytest.raises(InvalidInput, match="reason"):
            identity.merge(conn, shop.workspace_id, a.contact_id, b.contact_id, reason=" ", actor="t", now=NOW)
        with pytest.raises(NotFound, match="merge_id"):
            identity.merge(conn, shop.workspace_id, a.contact_id, foreign.contact_id, reason="r", actor="t", now=NOW)
        assert conn.execute(select(func.count()).select_from(contact_merges)).scalar_one() == 0


# ---- property: resolution is idempotent -------------------------------------------------------------
EMAILS = [f"p{i}@example.com" for i in range(6)]
PHONES = [f"+1415555{i:04d}" for i in range(100, 106)]
_slugs = itertools.count()

people_strategy = st.builds(
    lambda ext, email, phone, name, tag: person(
        external=[("crm", ext)] if ext else [], email=email, phone=phone,
        profile={"first_name": name} if name else {}, tags=[tag] if tag else []),
    st.sampled_from([None, "1", "2", "3"]), st.sampled_from([None, *EMAILS]), st.sampled_from([None, *PHONES]),
    st.sampled_from([None, "Ana", "Bo"]), st.sampled_from([None, "vip", "new"]),
).filter(lambda p: bool(p.identity_keys()))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(people=st.lists(people_strategy, min_size=1, max_size=12), batch=st.integers(min_value=1, max_value=5))
def test_resolving_twice_gives_the_same_contacts_and_changes_nothing(
        engine: Engine, people: list[Person], batch: int) -> None:
    shop = make_shop(engine, NOW, slug=f"prop-{next(_slugs)}")
    with engine.begin() as conn:
        first = [r for i in range(0, len(people), batch)
                 for r in resolve_many(conn, shop.workspace_id, shop.store.id, people[i:i + batch], NOW)]
        before = snapshot(conn)
        second = resolve_many(conn, shop.workspace_id, shop.store.id, people, NOW + timedelta(days=1))
        assert [r.contact_id for r in second] == [r.contact_id for r in first]
        assert not any(r.changed or r.created for r in second)
        assert [r.conflicts for r in second] == [r.conflicts for r in first]  # identities never move
        assert snapshot(conn) == before
        # every identity belongs to exactly one contact, and every person's first identity finds it
        t = contact_identities.c
        dupes = conn.execute(select(t.kind, t.namespace, t.value).where(t.workspace_id == shop.workspace_id)
                             .group_by(t.kind, t.namespace, t.value).having(func.count() > 1)).all()
        assert dupes == []


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.emails().map(str),
    st.from_regex(r"\A ?[A-Za-z0-9._+'\-]{0,70}@[A-Za-z0-9.\-]{0,20}(\.(com|TEST|invalid|co\.uk|xn--p1ai|123))? ?\Z"),
    st.text(max_size=40)))
def test_fast_email_path_agrees_with_the_full_check(raw: str) -> None:
    def outcome(fn: Any) -> tuple[str, str]:
        try:
            return "ok", fn(raw)
        except ValueError:
            return "invalid", ""
    assert outcome(identity.normalize_email) == outcome(rules.normalize_email)


def test_new_ids_look_like_new_id() -> None:
    made = identity.new_ids("cid", 500)
    assert len(set(made)) == 500 and identity.new_ids("ct", 0) == []
    single = new_id("cid")
    for made_id in made:
        assert has_prefix(made_id, "cid") and len(made_id) == len(single)
        assert set(made_id[4:]) <= set("0123456789ABCDEFGHJKMNPQRSTVWXYZ")
        assert made_id[:9] == single[:9]  # the same leading time digits (they change every ~9 hours)
    assert len({made_id[-1] for made_id in made}) == 32  # every digit shows up in 500 random ones


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.from_regex(r"\A[ +(]{0,2}[0-9][0-9 ().\-]{4,16}\Z"), st.text(max_size=20)),
       region=st.sampled_from([None, "US", "GB", "BR", "DE"]))
def test_cached_normalisers_agree_with_the_rules(raw: str, region: str | None) -> None:
    """identity.py caches the contact rules; a cache hit gives what the rule gives, and an invalid
    value keeps raising (exceptions are not cached)."""
    def outcome(fn: Any, *args: Any) -> tuple[str, str]:
        try:
            return "ok", fn(*args)
        except ValueError as exc:
            return "invalid", str(exc)
    for _ in range(2):
        assert outcome(identity._phone, raw, region) == outcome(rules.normalize_phone, raw, region)
        assert outcome(identity._country, raw) == outcome(rules.normalize_country, raw)


def test_consent_of_new_contacts_is_written_without_reading_their_history(engine: Engine, shop: Shop) -> None:
    with engine.begin() as conn:
        made = resolve_many(conn, shop.workspace_id, shop.store.id, [person(email="n1@example.com"),
                                                                      person(email="n2@example.com")], NOW)
        changes = [consent.ConsentChange(r.contact_id, shop.store.id, "email", "marketing", state, "test", NOW)
                   for r, state in zip(made, ("granted", "withdrawn"), strict=True)]
        assert consent.record_many(conn, shop.workspace_id, changes,
                                   new_contacts={r.contact_id for r in made if r.created}) == 2
        again = [consent.ConsentChange(c.contact_id, c.store_id, c.channel, c.purpose, c.state, c.source,
                                       NOW + timedelta(hours=1)) for c in changes]
        assert consent.record_many(conn, shop.workspace_id, again) == 0  # existing contacts: history read
        assert consent.current_states(conn, [r.contact_id for r in made]) == {
            (made[0].contact_id, "email", "marketing", shop.store.id): "granted",
            (made[1].contact_id, "email", "marketing", shop.store.id): "withdrawn"}


def test_bulk_insert_memo_keeps_equal_but_different_json_apart(engine: Engine, shop: Shop) -> None:
    """insert_many converts each distinct value once per call; 1, 1.0 and True are equal keys in a
    dict but different JSON, and lists/dicts are converted by content, in order."""
    base = {"workspace_id": shop.workspace_id, "email": None, "phone": None, "first_name": None,
            "last_name": None, "country": None, "language": None, "timezone": None, "created_at": NOW,
            "updated_at": NOW}
    values: list[tuple[Any, Any]] = [({"n": 1}, ["a", "b"]), ({"n": 1.0}, ["b", "a"]), ({"n": True}, ["a", "b"]),
                                     ({"a": "x", "b": "y"}, []), ({"b": "y", "a": "x"}, [1]), ({}, [True])]
    rows = [{**base, "id": new_id("ct"), "attributes": attributes, "tags": tags} for attributes, tags in values]
    with engine.begin() as conn:
        insert_many(conn, contacts, rows)
        stored = {r.id: (r.attributes, r.tags) for r in conn.execute(select(contacts.c.id, contacts.c.attributes,
                                                                            contacts.c.tags))}
    for row, (attributes, tags) in zip(rows, values, strict=True):
        got_attributes, got_tags = stored[row["id"]]
        assert json.dumps([got_attributes, got_tags], sort_keys=True) == json.dumps([attributes, tags],
                                                                                     sort_keys=True)  # JSONB: key order


def test_select_in_pads_and_matches_the_sqlalchemy_query(engine: Engine, shop: Shop) -> None:
    with engine.begin() as conn:
        made = resolve_many(conn, shop.workspace_id, None, [person(email=f"s{i}@example.com") for i in range(40)],
                            NOW)
        asked = [f"s{i}@example.com" for i in range(0, 60, 3)]  # some exist, some do not; padded to 32
        got = select_in(conn, contact_identities, ("value", "contact_id"),
                        {"workspace_id": shop.workspace_id, "kind": "email", "namespace": ""}, "value", asked)
        assert sorted(got) == sorted((f"s{i}@example.com", made[i].contact_id) for i in range(0, 40, 3))
        assert select_in(conn, contact_identities, ("value",), {"workspace_id": shop.workspace_id}, "value",
                         []) == []
