"""POST /api/v1/imports (multipart or text/csv), the `intake.import` job through the work engine,
GET /api/v1/imports/{id} and its CSV error report, on both backends."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from herald.api.routes.imports import data_dir
from herald.bootstrap import Container
from herald.db.tables import consent_records, contacts, jobs
from herald.worker.kinds import build_worker
from tests.api.conftest import World

CSV = ("E-mail,Mobile,First Name,Newsletter,Loyalty\r\n"
       "ana@example.com,(415) 555-0171,Ana,yes,gold\r\n"
       "not-an-email,,Bo,no,\r\n"
       "\"cy@example.com\",,\"Cy\r\nCe\",,silver\r\n"
       ",,Nobody,,\r\n")


@pytest.fixture
def uploads(container: Container, tmp_path: Path) -> Path:
    """Keep uploads in this test's directory (PostgreSQL would use the secret key's directory)."""
    container.settings.secret_key_file = tmp_path / "secret.key"
    if "data_dir" in type(container.settings).model_fields:
        setattr(container.settings, "data_dir", tmp_path)  # noqa: B010 - a setting this module may predate
    return data_dir(container) / "imports"


def run_jobs(container: Container) -> int:
    return asyncio.run(build_worker(container).run_once())


def upload(client: TestClient, headers: dict[str, str], text: str, **fields: str) -> Any:
    return client.post("/api/v1/imports", headers=headers, data=fields,
                       files={"file": ("customers.csv", text.encode("utf-8-sig"), "text/csv")})


def test_multipart_upload_runs_as_a_job(client: TestClient, world: World, container: Container,
                                        uploads: Path) -> None:
    a = world.callers["A"]
    made = upload(client, a.headers, CSV, kind="contacts", store_id=world.ids["A1"]["store"], default_country="US",
                  mapping=json.dumps({"Loyalty": "attributes.tier"}))
    assert made.status_code == 201, made.text
    body = made.json()
    assert made.headers["Location"] == f"/api/v1/imports/{body['id']}"
    assert (body["state"], body["kind"], body["source_name"], body["encoding"]) == (
        "pending", "contacts", "customers.csv", "utf-8-sig")
    assert {c["column"]: c["field"] for c in body["mapping"]} == {
        "E-mail": "email", "Mobile": "phone", "First Name": "first_name", "Newsletter": "email_marketing",
        "Loyalty": "attributes.tier"}
    assert (uploads / f"{body['id']}.csv").exists()
    with container.engine.begin() as conn:
        assert conn.execute(select(jobs.c.kind, jobs.c.payload).where(jobs.c.kind == "intake.import")).one() == (
            "intake.import", {"import_id": body["id"]})

    assert run_jobs(container) >= 1
    got = client.get(f"/api/v1/imports/{body['id']}", headers=a.headers).json()
    assert (got["state"], got["rows_ok"], got["rows_unchanged"], got["rows_failed"], got["errors"]) == (
        "completed", 2, 0, 2, 2)
    assert got["bytes_done"] == got["size_bytes"] and got["line"] == 6
    assert not (uploads / f"{body['id']}.csv").exists()  # the upload is gone once imported

    report = client.get(f"/api/v1/imports/{body['id']}/errors", headers=a.headers)
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(report.text)))
    assert rows[0] == ["line", "column", "value", "reason"]
    assert [r[:3] for r in rows[1:]] == [["3", "E-mail", "not-an-email"], ["6", "", ""]]
    with container.engine.begin() as conn:
        ana = conn.execute(select(contacts).where(contacts.c.email == "ana@example.com")).mappings().one()
        cy = conn.execute(select(contacts).where(contacts.c.email == "cy@example.com")).mappings().one()
        consent = conn.execute(select(consent_records.c.state, consent_records.c.source)).all()
    assert (ana["phone"], ana["attributes"], cy["first_name"]) == ("+14155550171", {"tier": "gold"}, "Cy\r\nCe")
    assert consent == [("granted", f"csv:{body['id']}")]


def test_a_large_upload_is_streamed_to_disk(client: TestClient, world: World, container: Container,
                                           uploads: Path) -> None:
    """Uploads have their own size limit (HERALD_MAX_UPLOAD_BYTES), above the JSON API's 1 MiB."""
    if "max_upload_bytes" not in type(container.settings).model_fields:
        pytest.skip("needs the max_upload_bytes setting (BodySizeLimit per path)")
    rows = 40_000
    text = "email,first_name\n" + "".join(f"big{i}@example.com,Big {i}\n" for i in range(rows))
    assert len(text) > 1_048_576
    made = upload(client, world.callers["A1"].headers, text, kind="contacts")
    assert made.status_code == 201, made.text
    run_jobs(container)
    got = client.get(f"/api/v1/imports/{made.json()['id']}", headers=world.callers["A1"].headers).json()
    assert (got["state"], got["rows_ok"]) == ("completed", rows)


def test_raw_csv_body_with_a_store_key(client: TestClient, world: World, container: Container, uploads: Path) -> None:
    a1 = world.callers["A1"]
    made = client.post("/api/v1/imports?kind=contacts&default_country=US&filename=list.csv",
                       headers={**a1.headers, "Content-Type": "text/csv"},
                       content=b"email;phone\nraw@example.com;415 555 0172\n")
    assert made.status_code == 201, made.text
    assert made.json()["store_id"] == world.ids["A1"]["store"]  # a store key imports into its own store
    assert made.json()["delimiter"] == ";"
    run_jobs(container)
    again = client.post("/api/v1/imports?kind=contacts&default_country=US",
                        headers={**a1.headers, "Content-Type": "text/csv"},
                        content=b"email;phone\nraw@example.com;415 555 0172\n")
    run_jobs(container)
    first = client.get(f"/api/v1/imports/{made.json()['id']}", headers=a1.headers).json()
    second = client.get(f"/api/v1/imports/{again.json()['id']}", headers=a1.headers).json()
    assert (first["rows_ok"], second["rows_ok"], second["rows_unchanged"]) == (1, 0, 1)
    listed = [i["id"] for i in client.get("/api/v1/imports", headers=a1.headers).json()["data"]]
    assert [i for i in listed if i in (made.json()["id"], again.json()["id"])] == [made.json()["id"],
                                                                                 again.json()["id"]]
    with container.engine.begin() as conn:
        assert conn.execute(select(func.count()).select_from(contacts)
                            .where(contacts.c.email == "raw@example.com")).scalar_one() == 1


def test_idempotency_key_replays_the_same_import(client: TestClient, world: World, container: Container,
                                                 uploads: Path) -> None:
    headers = {**world.callers["A1"].headers, "Idempotency-Key": "upload-1", "Content-Type": "text/csv"}
    first = client.post("/api/v1/imports?kind=contacts", headers=headers, content=b"email\nidem@example.com\n")
    second = client.post("/api/v1/imports?kind=contacts", headers=headers, content=b"email\nidem@example.com\n")
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json() and second.headers["Idempotent-Replayed"] == "true"
    assert len(list(uploads.iterdir())) == 1
    with container.engine.begin() as conn:
        assert conn.execute(select(func.count()).select_from(jobs).where(jobs.c.kind == "intake.import")
                            ).scalar_one() == 1


def test_imports_are_scoped_to_their_tenant(client: TestClient, world: World, container: Container,
                                            uploads: Path) -> None:
    made = upload(client, world.callers["A1"].headers, CSV, kind="contacts").json()
    for other in ("B", "A2"):
        caller = world.callers[other]
        assert client.get(f"/api/v1/imports/{made['id']}", headers=caller.headers).status_code == 404
        assert client.get(f"/api/v1/imports/{made['id']}/errors", headers=caller.headers).status_code == 404
        assert made["id"] not in [i["id"] for i in client.get("/api/v1/imports", headers=caller.headers).json()["data"]]
    assert client.get(f"/api/v1/imports/{made['id']}", headers=world.callers["A"].headers).status_code == 200
    denied = upload(client, world.callers["B"].headers, CSV, kind="contacts", store_id=world.ids["A1"]["store"])
    assert denied.status_code == 404
    assert client.get(f"/api/v1/imports/{made['id']}").status_code == 401


def test_a_vanished_upload_fails_the_import_for_good(client: TestClient, world: World, container: Container,
                                                     uploads: Path) -> None:
    made = upload(client, world.callers["A1"].headers, CSV, kind="contacts").json()
    (uploads / f"{made['id']}.csv").unlink()
    run_jobs(container)
    got = client.get(f"/api/v1/imports/{made['id']}", headers=world.callers["A1"].headers).json()
    assert got["state"] == "failed" and "is gone" in got["error"]
    with container.engine.begin() as conn:
        job = conn.execute(select(jobs.c.state, jobs.c.attempts, jobs.c.last_error)
                           .where(jobs.c.kind == "intake.import")).one()
    assert (job.state, job.attempts) == ("dead", 1) and "is gone" in job.last_error  # no pointless retries


@pytest.mark.parametrize(("fields", "text", "status", "where"), [
    ({}, CSV, 422, "kind"),
    ({"kind": "contacts", "mapping": "{not json"}, CSV, 422, "mapping"),
    ({"kind": "contacts", "mapping": json.dumps({"Nope": "email"})}, CSV, 422, "mapping"),
    ({"kind": "contacts"}, "Name,City\nA,B\n", 422, "mapping"),
    ({"kind": "contacts", "default_country": "Narnia"}, CSV, 422, "default_country"),
    ({"kind": "contacts"}, "", 422, "empty"),
    ({"kind": "contacts", "encoding": "klingon"}, CSV, 422, "encoding"),
])
def test_refusals_leave_nothing_behind(client: TestClient, world: World, uploads: Path, fields: dict[str, str],
                                       text: str, status: int, where: str) -> None:
    made = upload(client, world.callers["A1"].headers, text, **fields)
    assert made.status_code == status, made.text
    assert made.headers["content-type"] == "application/problem+json"
    assert where in made.json()["detail"]
    assert list(uploads.iterdir()) == []
    missing = client.post("/api/v1/imports", headers=world.callers["A1"].headers, data={"kind": "contacts"},
                          files={"other": ("x.csv", b"email\n", "text/csv")})
    assert missing.status_code == 422 and "file" in missing.json()["detail"]
