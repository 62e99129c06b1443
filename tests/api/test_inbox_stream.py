"""The inbox event stream, read by a real HTTP client from a real uvicorn on 127.0.0.1: new items
arrive at once through the in-process notifier, or by polling when another process wrote them;
Last-Event-ID replays what was missed; idle streams get heartbeats; a stream ends by itself after
its time and forgets a client that went away. Every read is bounded by the client's timeout and a
maximum number of lines."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import insert, update

from herald.api.app import create_app
from herald.api.routes.inbox import StreamTiming, stream_timing
from herald.bootstrap import Container
from herald.db.tables import inbox_items, stores
from herald.services import inbox
from tests.api.conftest import World

SITE = "https://shop-a1.example"
QUIET = StreamTiming(heartbeat_seconds=60, poll_seconds=60, max_seconds=60)  # only the notifier wakes it


@dataclass
class Server:
    url: str
    container: Container
    world: World
    timing: list[StreamTiming] = field(default_factory=lambda: [QUIET])

    def use(self, timing: StreamTiming) -> None:
        self.timing[0] = timing

    @property
    def ids(self) -> dict[str, str]:
        return self.world.ids["A1"]

    @property
    def workspace_id(self) -> str:
        return self.world.callers["A1"].principal.workspace_id

    def deliver(self, title: str, *, notify: bool = True) -> str:
        """Write an item; with notify=False it is as if another process wrote it."""
        with self.container.engine.begin() as conn:
            item_id = inbox.deliver(conn, self.workspace_id, self.ids["contact"], None, self.ids["store"], title,
                                    "line one\nline two", None, self.container.clock.now())
        if notify:
            inbox.notifier_for(self.container.engine).publish(self.workspace_id, self.ids["contact"])
        return item_id

    def token(self) -> str:
        resp = httpx.post(f"{self.url}/api/v1/inbox/{self.ids['contact']}/token", json={}, timeout=10,
                          headers=self.world.callers["A1"].headers)
        assert resp.status_code == 200, resp.text
        return str(resp.json()["token"])

    def listening(self) -> int:
        return inbox.notifier_for(self.container.engine).listening(self.workspace_id, self.ids["contact"])


@pytest.fixture
def server(container: Container, world: World) -> Iterator[Server]:
    with container.engine.begin() as conn:
        conn.execute(update(stores).where(stores.c.id == world.ids["A1"]["store"]).values(domain="shop-a1.example"))
    app = create_app(container)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = Server(f"http://127.0.0.1:{sock.getsockname()[1]}", container, world)
    app.dependency_overrides[stream_timing] = lambda: srv.timing[0]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uv.started, "uvicorn did not start"
    yield srv
    uv.should_exit = True
    thread.join(timeout=15)
    sock.close()


class Events:
    """Server-sent events read block by block (a block ends with a blank line)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def block(self) -> dict[str, str] | None:
        """The next block's fields (comment lines under "comment"); None when the stream ended."""
        fields: dict[str, str] = {}
        for _line in range(1_000):
            try:
                line = next(self._lines)
            except StopIteration:
                return fields or None
            if line == "":
                if fields:
                    return fields
                continue
            name, _, value = line.partition(":")
            fields[name or "comment"] = value.removeprefix(" ")
        raise AssertionError("no blank line in 1000 lines")

    def items(self, count: int) -> list[dict[str, str]]:
        found: list[dict[str, str]] = []
        for _block in range(200):
            if len(found) == count:
                return found
            block = self.block()
            assert block is not None, f"the stream ended after {len(found)} of {count} items"
            if block.get("event") == "item":
                found.append(block)
        raise AssertionError(f"only {len(found)} of {count} items in 200 blocks")


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as client:
        yield client


def test_new_items_reach_an_open_stream_at_once(server: Server, http: httpx.Client) -> None:
    """Polling and heartbeats are a minute apart here: only the notifier can bring the item."""
    with http.stream("GET", f"{server.url}/inbox/{server.token()}/stream", headers={"Origin": SITE}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert resp.headers["access-control-allow-origin"] == SITE
        assert resp.headers["cache-control"] == "no-store"
        events = Events(resp)
        assert events.block() == {"retry": "2000"}          # the stream is live
        item_id = server.deliver("Your parcel is on its way")
        (event,) = events.items(1)
    assert event["id"] == item_id
    data = json.loads(event["data"])
    assert data["id"] == item_id
    assert data["title"] == "Your parcel is on its way"
    assert data["body"] == "line one\nline two"
    assert data["read_at"] is None
    assert "message_id" not in data


def test_items_written_by_another_process_arrive_by_polling(server: Server, http: httpx.Client) -> None:
    server.use(StreamTiming(heartbeat_seconds=60, poll_seconds=0.1, max_seconds=60))
    with http.stream("GET", f"{server.url}/inbox/{server.token()}/stream") as resp:
        events = Events(resp)
        assert events.block() == {"retry": "2000"}
        first = server.deliver("one", notify=False)
        second = server.deliver("two", notify=False)
        got = events.items(2)
    assert [e["id"] for e in got] == [first, second]


def test_last_event_id_replays_what_was_missed(server: Server, http: httpx.Client) -> None:
    seen, missed_one, missed_two = (server.deliver(f"item {i}") for i in range(3))
    url = f"{server.url}/inbox/{server.token()}/stream"
    with http.stream("GET", url, headers={"Last-Event-ID": seen}) as resp:
        got = Events(resp).items(2)
    assert [e["id"] for e in got] == [missed_one, missed_two]
    assert [json.loads(e["data"])["title"] for e in got] == ["item 1", "item 2"]
    # a first connection gives the list's last_event_id as a query parameter; the header wins over it
    with http.stream("GET", url, params={"last_event_id": missed_one}) as resp:
        assert [e["id"] for e in Events(resp).items(1)] == [missed_two]
    with http.stream("GET", url, params={"last_event_id": seen}, headers={"Last-Event-ID": missed_one}) as resp:
        assert [e["id"] for e in Events(resp).items(1)] == [missed_two]


def test_the_list_hands_out_where_the_stream_starts(server: Server, http: httpx.Client) -> None:
    """What the widget does: list, then stream from the list's last_event_id; an item made in
    between is not lost."""
    server.deliver("listed")
    token = server.token()
    page = http.get(f"{server.url}/inbox/{token}").json()
    assert [i["title"] for i in page["data"]] == ["listed"]
    between = server.deliver("made between the list and the stream", notify=False)
    with http.stream("GET", f"{server.url}/inbox/{token}/stream",
                     params={"last_event_id": page["last_event_id"]}) as resp:
        assert [e["id"] for e in Events(resp).items(1)] == [between]


def test_an_idle_stream_gets_heartbeats(server: Server, http: httpx.Client) -> None:
    server.use(StreamTiming(heartbeat_seconds=0.05, poll_seconds=60, max_seconds=60))
    with http.stream("GET", f"{server.url}/inbox/{server.token()}/stream") as resp:
        events = Events(resp)
        assert events.block() == {"retry": "2000"}
        assert events.block() == {"comment": "keep-alive"}
        assert events.block() == {"comment": "keep-alive"}


def test_a_stream_ends_by_itself_and_forgets_its_listener(server: Server, http: httpx.Client) -> None:
    server.use(StreamTiming(heartbeat_seconds=60, poll_seconds=60, max_seconds=0.2))
    with http.stream("GET", f"{server.url}/inbox/{server.token()}/stream") as resp:
        events = Events(resp)
        blocks = [events.block() for _ in range(3)]
    assert blocks == [{"retry": "2000"}, None, None]
    assert server.listening() == 0


def test_a_client_that_goes_away_is_forgotten(server: Server, http: httpx.Client) -> None:
    with http.stream("GET", f"{server.url}/inbox/{server.token()}/stream") as resp:
        assert Events(resp).block() == {"retry": "2000"}
        assert server.listening() == 1
    for _ in range(200):   # the server notices the closed connection without writing to it
        if server.listening() == 0:
            break
        time.sleep(0.05)
    assert server.listening() == 0


def test_the_api_key_stream(server: Server, http: httpx.Client) -> None:
    url = f"{server.url}/api/v1/inbox/{server.ids['contact']}/stream"
    assert http.get(url).status_code == 401
    with http.stream("GET", url, headers=server.world.callers["A1"].headers) as resp:
        events = Events(resp)
        assert events.block() == {"retry": "2000"}
        item_id = server.deliver("for the backend")
        (event,) = events.items(1)
    data = json.loads(event["data"])
    assert data["id"] == item_id
    assert data["message_id"] is None
    assert data["store_id"] == server.ids["store"]
    foreign = f"{server.url}/api/v1/inbox/{server.world.ids['B1']['contact']}/stream"
    assert http.get(foreign, headers=server.world.callers["A1"].headers).status_code == 404


# ---- the widget, run by Node against this server (no browser here: see the harness) --------------

HARNESS = Path(__file__).with_name("inbox_widget_harness.mjs")


def test_the_widget_shows_counts_streams_items_and_marks_read(server: Server) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the widget's script is not run")
    for i in range(2):
        server.deliver(f"old {i}")
    proc = subprocess.Popen([node, str(HARNESS), f"{server.url}/inbox/widget.js", server.token()],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None

    def say(command: dict[str, object]) -> dict[str, object]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(command) + "\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline() or "{}")  # type: ignore[no-any-return]

    try:
        ready = json.loads(proc.stdout.readline() or "{}")   # the harness gives up after 10 s
        assert ready.get("step") == "ready", ready
        assert ready["badge"] == "2"
        assert ready["titles"] == ["old 1", "old 0"]
        assert not ready["panelOpen"]
        server.deliver('<img src=x onerror="alert(1)">')
        seen = say({"wait_badge": "3"})
        assert seen["titles"] == ['<img src=x onerror="alert(1)">', "old 1", "old 0"]   # text, never markup
        clicked = say({"click": True})
        assert clicked["panelOpen"] and clicked["badge"] is None
        assert say({"quit": True}) == {"step": "bye"}
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        _out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    with server.container.engine.connect() as conn:
        scope = inbox.InboxScope(server.workspace_id, server.ids["contact"], server.ids["store"])
        assert inbox.counts(conn, scope) == inbox.Counts(unread=0, total=3)


def test_a_late_commit_is_sent_without_moving_the_resume_position_back(server: Server, http: httpx.Client) -> None:
    """An item whose id was made before the newest one sent, committed after it (another process's
    slow transaction): it is sent, and its `id:` line stays at the newest id sent."""
    server.use(StreamTiming(heartbeat_seconds=60, poll_seconds=0.1, max_seconds=60))
    with http.stream("GET", f"{server.url}/inbox/{server.token()}/stream") as resp:
        events = Events(resp)
        assert events.block() == {"retry": "2000"}
        newest = server.deliver("newest")
        assert [e["id"] for e in events.items(1)] == [newest]
        late = inbox.id_floor(inbox.item_id_ms(newest) - 2_000)[:-1] + "1"
        with server.container.engine.begin() as conn:
            conn.execute(insert(inbox_items).values(
                id=late, workspace_id=server.workspace_id, store_id=server.ids["store"],
                contact_id=server.ids["contact"], title="late", body="", created_at=server.container.clock.now()))
        (event,) = events.items(1)
    assert event["id"] == newest
    assert json.loads(event["data"])["id"] == late
