"""The HTTP fallback against a real server: co-editing with WebSocket clients, presence, acks,
read-only access, bad and oversized bodies, idle cost and a graceful stop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from collab import crdt, protocol
from collab.admission import READ, WRITE, Access, AccessRequest
from collab.app import create_app
from collab.config import Settings
from collab.loadtest.http import HttpClient
from collab.protocol import AwarenessEntry
from collab.transport.pollwire import VERSION_HEADER, decode_body, encode_body
from tests.metrics import scrape
from tests.pollclient import PollClient
from tests.pyclient import PyClient
from tests.servers import ServerProcess, free_port
from tests.services import wait_until

ServerFactory = Callable[..., ServerProcess]


def poll_url(server: ServerProcess) -> str:
    return server.http_url + "/poll"


def presence_seen(received: list[protocol.Message]) -> dict[int, Any]:
    """The live presence a stock client would show after ``received``."""
    states: dict[int, tuple[int, Any]] = {}
    for message in received:
        if isinstance(message, protocol.AwarenessUpdate):
            for entry in protocol.decode_awareness_payload(message.payload):
                clock, _state = states.get(entry.client_id, (0, None))
                if entry.clock > clock or (entry.clock == clock and entry.is_removal):
                    states[entry.client_id] = (entry.clock, json.loads(entry.state))
    return {cid: state for cid, (_clock, state) in states.items() if state is not None}


async def announce(client: PyClient, client_id: int, clock: int, state: Any) -> None:
    entry = AwarenessEntry(client_id, clock, json.dumps(state))
    await client.send_raw(protocol.encode_awareness(protocol.encode_awareness_payload([entry])))


async def test_a_poll_client_and_a_websocket_client_co_edit_and_see_each_other(server: ServerProcess) -> None:
    poller = await PollClient(poll_url(server), "doc", client_id=101).start()
    socket_client = await PyClient(server.ws_url, "doc").start()
    await poller.insert("from the fallback. ")
    await socket_client.wait_text("from the fallback. ")
    await socket_client.insert("from the socket.")
    await poller.wait_text("from the fallback. from the socket.")
    for _ in range(20):  # both type at once
        await poller.insert("p", 0)
        await socket_client.insert("w", 0)
    await socket_client.wait_for(lambda: socket_client.text().count("p") == 20, 10)
    await poller.wait_for(lambda: poller.text() == socket_client.text(), 10)

    poller.announce({"user": {"name": "Poller"}})
    await announce(socket_client, 202, 1, {"user": {"name": "Socket"}})
    await socket_client.wait_for(lambda: 101 in presence_seen(socket_client.received), 10)
    await poller.wait_for(lambda: poller.present() == {202}, 10)
    await poller.wait_for(lambda: poller.acks >= 20, 10)  # "saved": every edit came back stored

    await poller.close()  # the goodbye: gone for the others at once
    await socket_client.wait_for(lambda: 101 not in presence_seen(socket_client.received), 5)
    await socket_client.close()


async def test_a_poller_that_stops_disappears_from_the_others_after_the_hold(
        server_factory: ServerFactory) -> None:
    server = server_factory(args=["--poll-presence-hold", "1"])
    watcher = await PyClient(server.ws_url, "doc").start()
    poller = await PollClient(poll_url(server), "doc", client_id=7).start()
    poller.announce({"user": {"name": "Leaving"}})
    await watcher.wait_for(lambda: 7 in presence_seen(watcher.received), 10)
    poller.stop()  # no goodbye: it just stops polling
    # hold (1 s) + the registry's housekeeping round (5 s) at most
    await watcher.wait_for(lambda: 7 not in presence_seen(watcher.received), 15)
    await watcher.close()


async def test_an_idle_poller_makes_a_bounded_number_of_requests(server_factory: ServerFactory) -> None:
    server = server_factory(args=["--poll-timeout", "0.5"])
    poller = await PollClient(poll_url(server), "doc").start()
    assert poller.connection is not None
    start = poller.connection.requests
    polls = poller.connection.polls
    connection = poller.connection
    # Twelve answers of an idle poll, each after the 0.5 s timeout: one request each.
    await wait_until(lambda: connection.polls >= polls + 12, 30, interval=0.05)
    made = connection.requests - start
    assert 12 <= made <= 13  # one poll per answer (and at most the step 2 of the first sync)
    assert all(isinstance(m, (protocol.SyncStep1, protocol.SyncStep2, protocol.SyncUpdate))
               for m in poller.received)  # nothing but the initial sync: empty answers
    await poller.close()


def _client(server: ServerProcess) -> HttpClient:
    return HttpClient("127.0.0.1", server.port, timeout=10)


UPDATE = crdt.Document().edit_text(0, "valid") or b""
BAD_PRESENCE = protocol.encode_awareness(protocol.encode_awareness_payload([AwarenessEntry(1, 1, "{")]))


@pytest.mark.parametrize(("label", "target", "body", "status", "reason"), [
    ("garbage", "/poll/doc?client=abcdefgh", b"\xff\xff\xff", 400, "malformed message"),
    ("truncated frame", "/poll/doc?client=abcdefgh", b"\x09\x00\x02", 400, "malformed message"),
    ("bad presence", "/poll/doc?client=abcdefgh",
     encode_body([protocol.encode_sync_update(UPDATE), BAD_PRESENCE]), 400, "awareness state is not JSON"),
    ("invalid update", "/poll/doc?client=abcdefgh",
     encode_body([protocol.encode_sync_update(UPDATE), protocol.encode_sync_update(b"\x05\x01\x02")]),
     400, "invalid Yjs update"),
    ("no client key", "/poll/doc", encode_body([protocol.encode_sync_update(UPDATE)]), 400, "client must be"),
    ("bad version", "/poll/doc?client=abcdefgh&version=nope!", b"", 400, "version token"),
    ("no document", "/poll/?client=abcdefgh", b"", 400, "document name is empty"),
])
async def test_bad_requests_get_the_reason_and_change_nothing(server: ServerProcess, label: str, target: str,
                                                             body: bytes, status: int, reason: str) -> None:
    watcher = await PyClient(server.ws_url, "doc").start()
    http = _client(server)
    response = await http.post(target, body)
    assert response.status == status, label
    assert reason in response.body.decode(), response.body
    # Nothing of a refused body reached the document, not even its valid first message.
    late = await PyClient(server.ws_url, "doc").start()
    assert late.text() == "" and watcher.text() == ""
    http.close()
    await watcher.close()
    await late.close()


async def test_only_post_is_served(server: ServerProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /poll/doc?client=abcdefgh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 405")
    writer.close()


async def test_an_oversized_body_is_refused_before_it_is_read(server_factory: ServerFactory) -> None:
    server = server_factory(args=["--max-message-size", "1000"])
    # Declared too large: the answer comes without a byte of the body being sent.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /poll/doc?client=abcdefgh HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 413")
    writer.close()
    # Chunked, with no length: refused once the limit passes, not after the whole body.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /poll/doc?client=abcdefgh HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"\x00" * 600
    for _ in range(2):
        writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 413") and b"larger than 1000 bytes" in await reader.read(200)
    writer.close()


async def test_a_send_is_answered_with_its_ack_once_stored(server: ServerProcess) -> None:
    http = _client(server)
    update = crdt.Document().edit_text(0, "stored") or b""
    body = encode_body([protocol.encode_sync_update(update)])
    response = await http.post("/poll/doc?client=abcdefgh&acks=1", body)
    assert response.status == 200
    [ack] = [protocol.decode_message(f) for f in decode_body(response.body)]
    assert isinstance(ack, protocol.SyncUpdate) and crdt.document_from([ack.update]).text() == "stored"
    again = await http.post("/poll/doc?client=abcdefgh&acks=1", body)
    assert len(decode_body(again.body)) == 1  # a retry is harmless, and acked too
    server.terminate()
    restarted = ServerProcess(server.store, port=free_port()).start()
    try:
        reader = await PyClient(restarted.ws_url, "doc").start()
        assert reader.text() == "stored"
        await reader.close()
    finally:
        restarted.stop()
    http.close()


async def test_a_poll_with_its_version_waits_for_news(server_factory: ServerFactory) -> None:
    server = server_factory(args=["--poll-timeout", "0.3"])
    http = _client(server)
    step1 = encode_body([protocol.encode_sync_step1(b"\x00")])
    first = await http.post("/poll/doc?client=abcdefgh&wait=1", step1)
    version = first.headers[VERSION_HEADER]
    assert [type(protocol.decode_message(f)) for f in decode_body(first.body)] == [
        protocol.SyncStep2, protocol.SyncStep1]
    empty = await http.post(f"/poll/doc?client=abcdefgh&wait=1&version={version}", step1)
    assert empty.status == 200 and empty.body == b""  # parked for the timeout, then empty
    waiting = asyncio.ensure_future(http.post(f"/poll/doc?client=abcdefgh&wait=1&version={version}", step1))
    writer = await PyClient(server.ws_url, "doc").start()
    await writer.insert("news")
    answer = await asyncio.wait_for(waiting, 10)  # woken by the update, long before the timeout
    [update] = [protocol.decode_message(f) for f in decode_body(answer.body)]
    assert isinstance(update, protocol.SyncUpdate) and crdt.document_from([update.update]).text() == "news"
    assert answer.headers[VERSION_HEADER] != version
    http.close()
    await writer.close()


async def test_a_graceful_stop_answers_parked_polls_at_once(server_factory: ServerFactory) -> None:
    server = server_factory(args=["--poll-timeout", "60"])
    http = _client(server)
    step1 = encode_body([protocol.encode_sync_step1(b"\x00")])
    first = await http.post("/poll/doc?client=abcdefgh&wait=1", step1)
    parked = asyncio.ensure_future(http.post(
        f"/poll/doc?client=abcdefgh&wait=1&version={first.headers[VERSION_HEADER]}", step1))
    await wait_until(lambda: scrape(server.http_url).value("collab_poll_parked") == 1, 10)
    exit_code = await asyncio.get_running_loop().run_in_executor(None, server.terminate)
    answer = await asyncio.wait_for(parked, 10)
    # Answered by the stopping instance, not cut when the grace period ran out.
    assert answer.status == 503 and b"restarting" in answer.body
    assert exit_code == 0
    http.close()


# --- read-only access, with an authorizer of a host application -------------------------------


@pytest.fixture
async def in_process(tmp_path: Path) -> AsyncIterator[str]:
    """A server in this process whose authorizer grants read to ``?mode=read``."""
    port = free_port()
    app = create_app(Settings(port=port, store=f"sqlite:///{tmp_path / 'c.db'}", log_level="warning"))

    async def authorize(request: AccessRequest) -> Access:
        return READ if request.query.get("mode") == "read" else WRITE

    app.state.collab.admission.authorize = authorize
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on"))
    task = asyncio.ensure_future(server.serve())
    await wait_until(lambda: server.started, 10)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 15)


async def test_a_read_only_poller_sees_everything_is_told_once_and_its_posts_are_refused(
        in_process: str) -> None:
    port = int(in_process.rsplit(":", 1)[1])
    writer = await PyClient(f"ws://127.0.0.1:{port}/ws", "doc").start()
    await writer.insert("shared")
    reader = await PollClient(in_process + "/poll", "doc", client_id=9, params={"mode": "read"}).start()
    assert reader.text() == "shared"
    denials = [m for m in reader.received if isinstance(m, protocol.Auth)]
    assert denials == [protocol.Auth(denied=True, reason="read-only")]
    await writer.insert(" more")
    await reader.wait_text("shared more")
    http = HttpClient("127.0.0.1", port, timeout=10)
    forged = crdt.Document().edit_text(0, "forged") or b""
    body = encode_body([protocol.encode_sync_update(forged)])
    refused = await http.post("/poll/doc?mode=read&client=abcdefgh", body)
    assert refused.status == 403 and refused.body.decode().strip() == "read-only"
    reader.announce({"user": {"name": "Reader"}})  # presence is still allowed
    await writer.wait_for(lambda: 9 in presence_seen(writer.received), 10)
    assert writer.text() == "shared more" and reader.text() == "shared more"
    assert [m for m in reader.received if isinstance(m, protocol.Auth)] == denials
    http.close()
    await reader.close()
    await writer.close()



async def test_a_client_is_held_to_the_message_rate_and_a_flood_is_refused(
        server_factory: ServerFactory) -> None:
    server = server_factory(args=["--max-message-rate", "50", "--message-burst", "10",
                                  "--flood-patience", "0.5"])
    http = _client(server)
    frames = [protocol.encode_awareness(protocol.encode_awareness_payload([AwarenessEntry(5, n, "{}")]))
              for n in range(1, 21)]
    statuses = []
    for _ in range(10):
        response = await http.post("/poll/doc?client=flooding", encode_body(frames))
        statuses.append(response.status)
        if response.status != 200:
            assert response.status == 429 and b"rate limited" in response.body
            break
    assert statuses[0] == 200 and statuses[-1] == 429  # slowed first, then refused
    assert scrape(server.http_url).value("collab_poll_throttled_total") >= 1
    other = await http.post("/poll/doc?client=someone-else", encode_body(frames[:1]))
    assert other.status == 200  # the limit is the flooding client's, not the document's
    http.close()


async def test_signed_tokens_work_over_the_fallback_as_over_a_websocket(
        server_factory: ServerFactory) -> None:
    from collab.tokens import mint

    secret = "poll-secret-" + "z" * 32
    server = server_factory("memory://", env={"COLLAB_SECRET": secret})
    http = _client(server)
    step1 = encode_body([protocol.encode_sync_step1(b"\x00")])
    missing = await http.post("/poll/doc?client=abcdefgh&wait=1", step1)
    other_doc = await http.post(
        f"/poll/doc?client=abcdefgh&token={mint(secret, mode='write', ttl=60, doc='other')}", step1)
    assert missing.status == 401 and other_doc.status == 403  # a reason, no document
    assert missing.headers["content-type"].startswith("text/plain")
    writer = await PollClient(poll_url(server), "doc", client_id=1,
                              params={"token": mint(secret, mode="write", ttl=60, doc="doc")}).start()
    await writer.insert("signed")
    reader = await PollClient(poll_url(server), "doc", client_id=2,
                              params={"token": mint(secret, mode="read", ttl=60, doc="doc")}).start()
    await reader.wait_text("signed")
    assert reader.read_only
    forged = crdt.Document().edit_text(0, "forged") or b""
    read_token = mint(secret, mode="read", ttl=60, doc="doc")
    refused = await http.post(f"/poll/doc?client=readerkey&token={read_token}",
                              encode_body([protocol.encode_sync_update(forged)]))
    assert refused.status == 403 and refused.body.decode().strip() == "read-only"
    await writer.insert(" more")
    await reader.wait_text("signed more")
    http.close()
    await writer.close()
    await reader.close()


async def test_a_parked_poll_holds_a_connection_slot_until_it_is_answered(
        server_factory: ServerFactory) -> None:
    import websockets

    server = server_factory(args=["--poll-timeout", "60", "--max-connections-per-document", "1"])
    step1 = encode_body([protocol.encode_sync_step1(b"\x00")])
    http = _client(server)
    first = await http.post("/poll/doc?client=abcdefgh&wait=1", step1)
    assert first.status == 200  # answered at once: it held its slot only while it ran
    parked = asyncio.ensure_future(http.post(
        f"/poll/doc?client=abcdefgh&wait=1&version={first.headers[VERSION_HEADER]}", step1))
    await wait_until(lambda: scrape(server.http_url).value("collab_poll_parked") == 1, 10)
    other = _client(server)
    assert (await other.post("/poll/doc?client=ijklmnop", step1)).status == 503
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{server.ws_url}/doc")
    assert refused.value.response.status_code == 503
    assert b"document" in refused.value.response.body
    assert (await other.post("/poll/elsewhere?client=ijklmnop", step1)).status == 200  # per document
    writer = PyClient(server.ws_url, "doc")
    parked.cancel()
    http.close()  # the client goes away: its parked poll ends and gives its slot back
    await wait_until(lambda: scrape(server.http_url).value("collab_poll_parked") == 0, 10)
    await writer.start()
    await writer.insert("in")
    assert scrape(server.http_url).value("collab_admission_refused_full_total") == 2
    other.close()
    await writer.close()
