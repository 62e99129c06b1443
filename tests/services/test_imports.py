"""CSV imports (services/imports.py, domain/csvmap.py) on SQLite and PostgreSQL: encodings, BOMs,
quoted newlines, bad rows and the error report, resume after a crash, re-runs, phones, consent,
orders and contact aggregates."""

from __future__ import annotations

import codecs
import csv
import io
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, select, update

from herald.db.tables import consent_records, contact_identities, contacts, import_errors, imports, order_lines, orders
from herald.domain import csvmap
from herald.domain.auth import Principal
from herald.domain.clock import ShiftedClock
from herald.domain.contacts import InvalidValue
from herald.domain.errors import InvalidInput
from herald.services import imports as service
from herald.services.identity import store_namespace
from tests.services.support import Shop, make_shop

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def shop(engine: Engine) -> Shop:
    return make_shop(engine, NOW)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def start(engine: Engine, shop: Shop, path: Path, *, kind: str = "contacts", mapping: dict[str, str] | None = None,
          default_country: str | None = "US", encoding: str = "auto") -> dict[str, Any]:
    facts = service.inspect_file(path, encoding)
    with engine.begin() as conn:
        return service.create(conn, Principal("test", shop.workspace_id, None), kind=kind, store_id=shop.store.id,
                              path=path, source_name=path.name, facts=facts, mapping=mapping,
                              default_country=default_country, now=NOW)


def run_file(engine: Engine, shop: Shop, path: Path, **options: Any) -> dict[str, Any]:
    batch_rows = options.pop("batch_rows", None)
    row = start(engine, shop, path, **options)
    return service.run(engine, row["id"], ShiftedClock(), batch_rows=batch_rows)


def errors_of(engine: Engine, import_id: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO("".join(service.error_csv(engine, import_id)))))


def by_email(conn: Connection, email: str) -> dict[str, Any]:
    return dict(conn.execute(select(contacts).where(contacts.c.email == email)).mappings().one())


def count(conn: Connection, table: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# ---- mapping and values (pure) ---------------------------------------------------------------------
def test_mapping_is_detected_from_common_headers() -> None:
    header = ["E-mail", "First Name", "Surname", "Mobile", "Country", "Tags", "Accepts Marketing",
              "SMS Marketing", "Customer ID", "attributes.Tier", "Notes"]
    fields = {c.name: c.field for c in csvmap.build_mapping("contacts", header)}
    assert fields == {"E-mail": "email", "First Name": "first_name", "Surname": "last_name", "Mobile": "phone",
                      "Country": "country", "Tags": "tags", "Accepts Marketing": "email_marketing",
                      "SMS Marketing": "sms_marketing", "Customer ID": "external", "attributes.Tier": "attributes.tier"}
    assert "Notes" not in fields  # unmapped columns are dropped unless --map keeps them


def test_mapping_overrides() -> None:
    header = ["Email Address", "Phone Number", "Default Address Phone", "Notes", "Loyalty Tier", "CRM"]
    auto = {c.name: c.field for c in csvmap.build_mapping("contacts", header)}
    assert auto == {"Email Address": "email", "Phone Number": "phone"}  # "Phone Number" outranks the address one
    over = {c.name: c.field for c in csvmap.build_mapping(
        "contacts", header, {"default address phone": "phone", "Email Address": "ignore", "CRM": "external.crm",
                             "*": "attributes"})}
    assert over == {"Default Address Phone": "phone", "Notes": "attributes.notes",
                    "Loyalty Tier": "attributes.loyalty_tier", "CRM": "external.crm",
                    "Phone Number": "attributes.phone_number"}
    with pytest.raises(InvalidValue, match="not in the header"):
        csvmap.build_mapping("contacts", header, {"Nope": "email"})
    with pytest.raises(InvalidValue, match="unknown contacts field"):
        csvmap.build_mapping("contacts", header, {"Notes": "favourite_colour"})
    with pytest.raises(InvalidValue, match="no column holds an email"):
        csvmap.require_fields("contacts", csvmap.build_mapping("contacts", ["Name", "City"]), ["Name", "City"])


@pytest.mark.parametrize(("raw", "expected"), [
    ("yes", True), ("No", False), ("TRUE", True), ("false", False), ("1", True), ("0", False), ("", None),
    ("subscribed", True), ("unsubscribed", False)])
def test_consent_values(raw: str, expected: bool | None) -> None:
    assert csvmap.parse_consent(raw) is expected


def test_values() -> None:
    assert csvmap.split_tags("vip, wholesale;newsletter ,,") == ["vip", "wholesale", "newsletter"]
    assert csvmap.parse_datetime("2024-01-05 10:22:11 -0500") == datetime(2024, 1, 5, 15, 22, 11, tzinfo=UTC)
    assert csvmap.parse_datetime("2024-01-05T10:22:11Z") == datetime(2024, 1, 5, 10, 22, 11, tzinfo=UTC)
    assert csvmap.parse_datetime("2024/01/05") == datetime(2024, 1, 5, tzinfo=UTC)
    with pytest.raises(InvalidValue, match="ISO 8601"):
        csvmap.parse_datetime("05/01/2024")
    assert csvmap.clean_amount("$1,234.50") == "1234.50"
    assert csvmap.clean_amount("1.234,50") == "1234.50"
    assert csvmap.clean_amount("19,99") == "19.99"
    assert csvmap.country_code("Germany") == "DE"
    assert csvmap.clean_id("'7012345678") == "7012345678"
    assert csvmap.sniff_delimiter('email;"first; name";phone') == ";"
    assert csvmap.sniff_delimiter("email\tphone") == "\t"


# ---- encodings, BOMs, delimiters, line endings -------------------------------------------------------
NAMES = "email,first_name,last_name\r\nzoe@example.com,Zoë,Müller\r\nfrancois@example.com,François,Señor\r\n"


@pytest.mark.parametrize(("encoding", "detected"), [
    ("utf-8-sig", "utf-8-sig"), ("utf-16", "utf-16"), ("cp1252", "cp1252"), ("utf-16-le", "utf-16-le")])
def test_encodings(engine: Engine, shop: Shop, tmp_path: Path, encoding: str, detected: str) -> None:
    path = write(tmp_path / "names.csv", NAMES, encoding)
    if encoding == "utf-8-sig":
        assert path.read_bytes().startswith(codecs.BOM_UTF8)
    done = run_file(engine, shop, path)
    assert (done["state"], done["encoding"], done["rows_ok"], done["rows_failed"]) == ("completed", detected, 2, 0)
    with engine.begin() as conn:
        assert by_email(conn, "zoe@example.com")["first_name"] == "Zoë"
        assert by_email(conn, "zoe@example.com")["last_name"] == "Müller"
        assert by_email(conn, "francois@example.com")["first_name"] == "François"


def test_explicit_encoding_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "names.csv", NAMES, "cp1252")
    with pytest.raises(service.ImportFileError, match=r"not valid utf-8.*line 2.*cp1252"):
        service.inspect_file(path, "utf-8")
    assert service.inspect_file(path, "latin-1").encoding == "iso8859-1"


def test_semicolons_tabs_and_old_mac_line_endings(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    semi = run_file(engine, shop, write(tmp_path / "a.csv", "Email;Tags\na@example.com;x,y\n"))
    tabs = run_file(engine, shop, write(tmp_path / "b.csv", "Email\tFirst Name\nb@example.com\tBea\n"))
    mac = run_file(engine, shop, write(tmp_path / "c.csv", 'Email,First Name\r"c@example.com","Cy\rCe"\rbad,\r'))
    assert [r["rows_ok"] for r in (semi, tabs, mac)] == [1, 1, 1]
    assert errors_of(engine, mac["id"])[0]["line"] == "4"
    with engine.begin() as conn:
        assert by_email(conn, "a@example.com")["tags"] == ["x", "y"]
        assert by_email(conn, "b@example.com")["first_name"] == "Bea"
        assert by_email(conn, "c@example.com")["first_name"] == "Cy\rCe"


# ---- bad rows and the error report ------------------------------------------------------------------
BAD = (
    "Email,Phone,First Name,Country,Accepts Marketing,Customer ID\n"  # 1
    'ok@example.com,,"Ann\nMarie",US,yes,\n'  # 2-3: a quoted newline
    "not-an-email,,Bob,US,no,\n"  # 4: the email was the only identity
    ",,Nobody,US,,\n"  # 5: no identity at all
    "phoneless@example.com,12,Cat,US,maybe,\n"  # 6: bad phone and consent dropped, row lands
    '"Multi\nline",,Dan,,,\n'  # 7-8: a bad email spanning two lines
    ",,,,,\n"  # 9: a row of bare delimiters is skipped
    "extra@example.com,,Eve,US,,,oops\n"  # 10: more values than columns
    "atlantis@example.com,,Fay,Atlantis,,\n"  # 11: unknown country dropped
    ",+14155550123,Gus,,,C-9\n"  # 12: phone and customer id, fine
)


def test_bad_rows_are_reported_with_line_column_value_reason(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    done = run_file(engine, shop, write(tmp_path / "bad.csv", BAD))
    assert (done["rows_ok"], done["rows_unchanged"], done["rows_failed"]) == (4, 0, 4)
    assert done["line"] == 12
    report = errors_of(engine, done["id"])
    assert [(e["line"], e["column"], e["value"]) for e in report] == [
        ("4", "Email", "not-an-email"),
        ("5", "", ""),
        ("6", "Phone", "12"),
        ("6", "Accepts Marketing", "maybe"),
        ("7", "Email", "Multi\nline"),
        ("10", "", "oops"),
        ("11", "Country", "Atlantis"),
    ]
    reasons = [e["reason"] for e in report]
    assert reasons[0].startswith("An email address must have an @-sign") and "row not imported" in reasons[0]
    assert reasons[1] == "no email, phone or customer id; row not imported"
    assert "not a valid number" in reasons[2] and reasons[2].endswith("the rest of the row was imported")
    assert "not yes/no" in reasons[3]
    assert "7 values but the header has 6 columns" in reasons[5]
    assert "Atlantis" in reasons[6] and "value ignored" in reasons[6]
    with engine.begin() as conn:
        assert by_email(conn, "ok@example.com")["first_name"] == "Ann\nMarie"
        assert by_email(conn, "phoneless@example.com")["phone"] is None
        assert by_email(conn, "atlantis@example.com")["country"] is None
        gus = conn.execute(select(contacts).where(contacts.c.phone == "+14155550123")).mappings().one()
        ids = {(r.namespace, r.value) for r in conn.execute(select(contact_identities).where(
            contact_identities.c.contact_id == gus["id"], contact_identities.c.kind == "external"))}
        assert ids == {(store_namespace(shop.store.id), "C-9")}


def test_error_report_csv_is_well_formed(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    done = run_file(engine, shop, write(tmp_path / "bad.csv", "Email,First Name\n=cmd(),x\n+1 555,y\n"))
    text = "".join(service.error_csv(engine, done["id"]))
    assert text.startswith("line,column,value,reason\r\n")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[1][:3] == ["2", "Email", "'=cmd()"]  # a spreadsheet would run it as a formula
    assert rows[2][:3] == ["3", "Email", "+1 555"]


def test_rows_the_database_cannot_hold_are_reported_alone(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    """A NUL character (PostgreSQL text cannot hold one) and a value longer than its column
    (PostgreSQL refuses it; the batch is split until the row is found) fail only their row."""
    long_language = "en-" + "-".join(["abcdefgh"] * 4)  # a well-formed BCP 47 tag of 38 characters
    path = tmp_path / "odd.csv"
    path.write_bytes(b"Email,First Name,Language\n"
                     b"a@example.com,A,en\n"
                     b"nul@example.com,Nu\x00ll,en\n"
                     + f"long@example.com,L,{long_language}\n".encode()
                     + b"z@example.com,Z,pt-BR\n")
    done = run_file(engine, shop, path, batch_rows=10)
    report = errors_of(engine, done["id"])
    assert report[0]["line"] == "3" and "NUL" in report[0]["reason"]
    if engine.dialect.name == "postgresql":
        assert (done["rows_ok"], done["rows_failed"]) == (2, 2)
        assert report[1]["line"] == "4" and report[1]["reason"].startswith("could not be stored:")
    else:  # SQLite does not enforce VARCHAR lengths
        assert (done["rows_ok"], done["rows_failed"]) == (3, 1)
    with engine.begin() as conn:
        assert by_email(conn, "z@example.com")["language"] == "pt-BR"


def test_unreadable_file_and_missing_identity_column(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    with pytest.raises(service.ImportFileError, match="empty"):
        service.inspect_file(write(tmp_path / "empty.csv", "\n\n"))
    with pytest.raises(InvalidInput, match="no column holds an email"):
        start(engine, shop, write(tmp_path / "x.csv", "Name,City\nA,B\n"))
    with pytest.raises(InvalidInput, match="default_country"):
        start(engine, shop, write(tmp_path / "y.csv", "Email\na@example.com\n"), default_country="XX")


# ---- phones, consent, tags, attributes -------------------------------------------------------------
def test_phone_default_country_and_row_country(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    path = write(tmp_path / "p.csv", "Email,Phone,Country\n"
                                     "us@example.com,(415) 555-0132,\n"
                                     "gb@example.com,020 7946 0958,GB\n"
                                     "intl@example.com,+49 30 901820,\n")
    run_file(engine, shop, path, default_country="US")
    with engine.begin() as conn:
        assert by_email(conn, "us@example.com")["phone"] == "+14155550132"
        assert by_email(conn, "gb@example.com")["phone"] == "+442079460958"  # the row's country wins
        assert by_email(conn, "intl@example.com")["phone"] == "+4930901820"
    no_default = run_file(engine, shop, write(tmp_path / "q.csv", "Email,Phone\nx@example.com,(415) 555-0133\n"),
                          default_country=None)
    assert "no country code" in errors_of(engine, no_default["id"])[0]["reason"]


def test_consent_tags_and_attributes(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "Email,Phone,Accepts Email Marketing,Accepts SMS Marketing,Tags,Tier\n"
                                     "a@example.com,+14155550140,yes,no,\"vip; b2b\",gold\n"
                                     "b@example.com,,0,,newsletter,\n")
    done = run_file(engine, shop, path, mapping={"Tier": "attributes.tier"})
    with engine.begin() as conn:
        a, b = by_email(conn, "a@example.com"), by_email(conn, "b@example.com")
        assert a["tags"] == ["vip", "b2b"] and a["attributes"] == {"tier": "gold"}
        assert b["tags"] == ["newsletter"] and b["attributes"] == {}
        records = {(r.contact_id, r.channel, r.state, r.source, r.store_id)
                   for r in conn.execute(select(consent_records))}
    source = f"csv:{done['id']}"
    assert records == {(a["id"], "email", "granted", source, shop.store.id),
                       (a["id"], "sms", "withdrawn", source, shop.store.id),
                       (b["id"], "email", "withdrawn", source, shop.store.id)}
    # A later file that only flips consent counts that row as changed, and appends one record.
    flip = run_file(engine, shop, write(tmp_path / "d.csv", "Email,Accepts Email Marketing\n"
                                                             "a@example.com,no\nb@example.com,no\n"))
    assert (flip["rows_ok"], flip["rows_unchanged"]) == (1, 1)
    with engine.begin() as conn:
        assert count(conn, consent_records) == 4


# ---- re-runs and resume -----------------------------------------------------------------------------
def many(n: int, start_at: int = 0) -> str:
    rows = ["Email,First Name,Phone,Accepts Marketing,Tags"]
    for i in range(start_at, start_at + n):
        phone = f"+1415555{i % 10000:04d}" if i % 3 == 0 else ""
        rows.append(f"user{i}@example.com,User {i},{phone},{'yes' if i % 2 else 'no'},t{i % 4}")
    rows.append("broken,,,,")  # one bad row at the end
    return "\n".join(rows) + "\n"


def snapshot(conn: Connection) -> list[Any]:
    return [sorted(tuple(r) for r in conn.execute(select(t))) for t in (contacts, contact_identities, consent_records)]


def test_rerunning_the_same_file_changes_nothing(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    path = write(tmp_path / "many.csv", many(25))
    first = run_file(engine, shop, path, batch_rows=7)
    assert (first["rows_ok"], first["rows_unchanged"], first["rows_failed"]) == (25, 0, 1)
    with engine.begin() as conn:
        before = snapshot(conn)
    again = run_file(engine, shop, path, batch_rows=10)
    assert (again["rows_ok"], again["rows_unchanged"], again["rows_failed"]) == (0, 25, 1)
    with engine.begin() as conn:
        assert snapshot(conn) == before


@pytest.mark.parametrize("reader_process", [False, True], ids=["in-process", "reader-process"])
def test_resume_after_a_crash_mid_file(engine: Engine, shop: Shop, tmp_path: Path, reader_process: bool) -> None:
    path = write(tmp_path / "many.csv", many(40))
    row = start(engine, shop, path)

    def crash(_conn: Connection, n: int) -> None:
        if n == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        service.run(engine, row["id"], ShiftedClock(), batch_rows=6, after_batch=crash, reader_process=reader_process)
    with engine.begin() as conn:
        stopped = dict(conn.execute(select(imports).where(imports.c.id == row["id"])).mappings().one())
        assert count(conn, contacts) == 12  # two batches committed, the third rolled back
    assert stopped["state"] == "failed" and "simulated crash" in stopped["error"]
    assert (stopped["rows_ok"], stopped["line"]) == (12, 13)
    assert stopped["offset"] == len("".join(line + "\n" for line in many(40).splitlines()[:13]).encode())
    done = service.run(engine, row["id"], ShiftedClock(), batch_rows=6, reader_process=reader_process)
    assert (done["state"], done["rows_ok"], done["rows_unchanged"], done["rows_failed"]) == ("completed", 40, 0, 1)
    with engine.begin() as conn:
        assert count(conn, contacts) == 40
        assert count(conn, consent_records) == 40
        assert count(conn, import_errors) == 1  # the bad row, reported once
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    run_file(engine, shop, write(fresh / "many.csv", many(40)), batch_rows=100)
    with engine.begin() as conn:
        assert count(conn, contacts) == 40


def test_a_second_runner_cannot_commit_the_same_batch(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    row = start(engine, shop, write(tmp_path / "many.csv", many(20)))

    def overtaken(offset: int, _rows: int) -> None:
        """After our first batch, another runner commits the next one (moves the checkpoint)."""
        with engine.begin() as conn:
            conn.execute(update(imports).where(imports.c.id == row["id"]).values(offset=offset + 1))

    result = service.run(engine, row["id"], ShiftedClock(), batch_rows=5, progress=overtaken)
    assert (result["state"], result["rows_ok"]) == ("running", 5)  # it stopped instead of writing a batch twice


def test_resume_refuses_a_different_file(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    path = write(tmp_path / "many.csv", many(10))
    row = start(engine, shop, path)
    with engine.begin() as conn:
        conn.execute(update(imports).where(imports.c.id == row["id"]).values(state="failed"))
    write(path, many(10).replace("user1@", "userX@"))
    with pytest.raises(service.ImportFileError, match="changed since the import started"):
        service.run(engine, row["id"], ShiftedClock())
    with pytest.raises(service.ImportFileError, match="SHA-256 differs"):
        service.prepare_resume(engine, Principal("t", shop.workspace_id, None), row["id"], path, kind="contacts",
                               now=NOW)


# ---- orders -----------------------------------------------------------------------------------------
ORDERS = (
    "Name,Email,Financial Status,Currency,Subtotal,Shipping,Taxes,Total,Discount Code,Created at,"
    "Lineitem quantity,Lineitem name,Lineitem price,Lineitem sku,Id,Shipping Country,Accepts Marketing\n"
    "#1001,ann@example.com,paid,USD,30.00,5.00,2.50,37.50,WELCOME,2024-01-05 10:22:11 -0500,2,Mug,10.00,MUG,5001,US,"
    "yes\n"
    "#1001,,,,,,,,,,1,Tee,10.00,TEE,5001,,\n"  # the second line item of #1001
    "#1002,ann@example.com,paid,USD,20.00,0,0,20.00,,2024-02-01T09:00:00Z,1,Cap,20.00,CAP,5002,US,\n"
    "#1003,bob@example.com,paid,EUR,\"1.234,50\",0,0,\"1.234,50\",,2024-02-03,1,Lamp,\"1.234,50\",,5003,DE,\n"
    "#1004,cy@example.com,paid,USD,5,0,0,5,,yesterday,1,Pen,5,,5004,US,\n"  # bad date: not imported
    "#1005,ann@example.com,cancelled,USD,9,0,0,9,,2024-03-01,1,Pen,9,,5005,US,\n"  # cancelled: not counted
)


def test_orders_import_updates_contact_aggregates(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    done = run_file(engine, shop, write(tmp_path / "orders.csv", ORDERS), kind="orders", batch_rows=2)
    assert (done["state"], done["rows_ok"], done["rows_failed"]) == ("completed", 4, 1)
    assert [(e["line"], e["column"], e["value"]) for e in errors_of(engine, done["id"])] == [
        ("6", "Created at", "yesterday")]
    with engine.begin() as conn:
        ann, bob = by_email(conn, "ann@example.com"), by_email(conn, "bob@example.com")
        assert (ann["orders_count"], ann["total_spent"]) == (2, {"USD": 5750})
        assert ann["first_order_at"] == datetime(2024, 1, 5, 15, 22, 11, tzinfo=UTC)
        assert ann["last_order_at"] == datetime(2024, 2, 1, 9, 0, tzinfo=UTC)
        assert (bob["orders_count"], bob["total_spent"]) == (1, {"EUR": 123450})
        first = dict(conn.execute(select(orders).where(orders.c.external_id == "5001")).mappings().one())
        assert (first["number"], first["total_minor"], first["discount_codes"]) == ("#1001", 3750, ["WELCOME"])
        lines = {(r.title, r.quantity, r.unit_price_minor, r.sku) for r in conn.execute(
            select(order_lines).where(order_lines.c.order_id == first["id"]))}
        assert lines == {("Mug", 2, 1000, "MUG"), ("Tee", 1, 1000, "TEE")}
        cancelled = conn.execute(select(orders.c.cancelled_at).where(orders.c.external_id == "5005")).scalar_one()
        assert cancelled is not None
        assert conn.execute(select(consent_records.c.state).where(
            consent_records.c.contact_id == ann["id"])).scalars().all() == ["granted"]


def test_orders_rerun_is_unchanged(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    single = "\n".join(line for line in ORDERS.splitlines() if not line.startswith("#1001,,"))  # one line each
    path = write(tmp_path / "orders.csv", single + "\n")
    run_file(engine, shop, path, kind="orders")
    with engine.begin() as conn:
        before = [sorted(tuple(r) for r in conn.execute(select(t))) for t in (orders, contacts)]
    again = run_file(engine, shop, path, kind="orders")
    assert (again["rows_ok"], again["rows_unchanged"], again["rows_failed"]) == (0, 4, 1)
    with engine.begin() as conn:
        assert [sorted(tuple(r) for r in conn.execute(select(t))) for t in (orders, contacts)] == before


def test_orders_need_an_id_and_a_date_column(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="placed_at"):
        start(engine, shop, write(tmp_path / "o.csv", "Order ID,Total\n1,2\n"), kind="orders")


# ---- the reader process ------------------------------------------------------------------------------
def outcome(engine: Engine, import_id: str) -> tuple[Any, ...]:
    """What an import left behind, without the generated ids and with contacts named by email."""
    with engine.begin() as conn:
        row = dict(conn.execute(select(imports).where(imports.c.id == import_id)).mappings().one())
        people = {r.id: r.email or r.phone for r in conn.execute(select(contacts))}
        found = sorted(repr((r.email, r.phone, r.first_name, r.country, r.tags)) for r in conn.execute(
            select(contacts)))
        keys = sorted((people[r.contact_id], r.kind, r.value) for r in conn.execute(select(contact_identities)))
        consents = sorted((people[r.contact_id], r.channel, r.state) for r in conn.execute(select(consent_records)))
    counters = (row["state"], row["rows_ok"], row["rows_unchanged"], row["rows_failed"], row["offset"], row["line"])
    return counters, errors_of(engine, import_id), found, keys, consents


def test_the_reader_process_imports_exactly_what_the_importing_process_does(
        engine: Engine, shop: Shop, tmp_path: Path) -> None:
    """Parsing in a second process (large files) changes nothing: rows, identities, consent,
    counters, checkpoint and the error report are those of parsing in the importing process.
    The file is BAD followed by rows whose columns do not match its header (notes on most rows)."""
    text = BAD + "".join(many(30).splitlines(keepends=True)[1:])
    results = []
    for n, reader_process in enumerate((False, True)):
        row = start(engine, shop, write(tmp_path / f"file-{n}.csv", text))
        done = service.run(engine, row["id"], ShiftedClock(), batch_rows=4, reader_process=reader_process)
        results.append(outcome(engine, done["id"]))
        with engine.begin() as conn:  # start the second run from an empty workspace (cascades)
            conn.execute(contacts.delete())
    assert results[0] == results[1]
    assert results[0][0][:4] == ("completed", 34, 0, 5)
    assert len(results[0][1]) > 30  # bad phones, countries, consents: reported, rows imported


def test_a_failing_reader_process_fails_the_import_resumably(engine: Engine, shop: Shop, tmp_path: Path) -> None:
    path = write(tmp_path / "many.csv", many(10))
    row = start(engine, shop, path)
    path.write_bytes(path.read_bytes()[:200])  # shorter than inspected; the size check runs before the reader
    with pytest.raises(service.ImportFileError, match="changed"):
        service.run(engine, row["id"], ShiftedClock(), reader_process=True)
    fine = start(engine, shop, write(tmp_path / "fine.csv", many(10)))
    with engine.begin() as conn:
        conn.execute(update(imports).where(imports.c.id == fine["id"]).values(encoding="utf-32"))
    with pytest.raises(UnicodeDecodeError):  # raised in the reader process, re-raised here
        service.run(engine, fine["id"], ShiftedClock(), reader_process=True)
    with engine.begin() as conn:
        failed = conn.execute(select(imports.c.state, imports.c.error).where(imports.c.id == fine["id"])).one()
    assert failed.state == "failed" and "UnicodeDecodeError" in failed.error


def test_large_contact_files_use_the_reader_process() -> None:
    big = {"kind": "contacts", "size_bytes": service.PROCESS_MIN_BYTES + 100, "offset": 100}
    assert service._worth_a_process(big) is ((os.cpu_count() or 1) > 1)
    assert not service._worth_a_process({**big, "offset": 101})
    assert not service._worth_a_process({**big, "kind": "orders"})
