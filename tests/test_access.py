"""Access control on a real server: signed tokens, read-only clients, origins, private metrics."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import jwt
import pytest
import websockets

from collab import crdt, protocol
from collab.loadtest.http import HttpClient
from collab.tokens import mint
from collab.transport.pollwire import encode_body
from tests.jsclient import js_clients
from tests.pollclient import PollClient
from tests.pyclient import PyClient
from tests.servers import ROOT, ServerProcess, free_port

ServerFactory = Callable[..., ServerProcess]
SECRET = "test-secret-" + "x" * 32


def token(doc: str | None = "doc", mode: str = "write", ttl: float = 600, **claims: str) -> str:
    return mint(SECRET, mode=mode, ttl=ttl, doc=doc, **claims)  # type: ignore[arg-type]


@pytest.fixture
def secured(server_factory: ServerFactory) -> ServerProcess:
    return server_factory("memory://", env={"COLLAB_SECRET": SECRET})


async def client(server: ServerProcess, room: str = "doc", **kwargs: object) -> PyClient:
    return await PyClient(server.ws_url, room, **kwargs).start()  # type: ignore[arg-type]


async def refusal(url: str, **kwargs: object) -> tuple[int, str]:
    """The HTTP status and body a WebSocket upgrade is refused with."""
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, **kwargs):  # type: ignore[arg-type]
            pass
    response = refused.value.response
    return response.status_code, response.body.decode()


def http(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def tampered(value: str) -> str:
    """The same token with its payload changed to name another mode (signature unchanged)."""
    head, payload, signature = value.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["mode"] = "write"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{signature}"


async def test_connections_without_a_good_token_are_refused_before_any_data(secured: ServerProcess) -> None:
    writer = await client(secured, params={"token": token()})
    await writer.insert("original")
    url = f"{secured.ws_url}/doc"
    cases = [
        ("", 401, "token is required"),
        (f"?token={token(ttl=-60)}", 401, "expired"),
        (f"?token={tampered(token(mode='read'))}", 401, "bad signature"),
        (f"?token={mint('another-secret-' + 'y' * 32, mode='write', ttl=60, doc='doc')}", 401,
         "bad signature"),
        ("?token=not-a-jwt", 401, "not a JWT"),
        (f"?token={token(doc='other-doc')}", 403, "another document"),
        (f"?token={jwt.encode({'exp': time.time() + 60, 'doc': 'doc', 'mode': 'admin'}, SECRET)}",
         401, "mode"),
        (f"?token={jwt.encode({'doc': 'doc', 'mode': 'write'}, SECRET)}", 401, "exp"),
    ]
    for query, status, reason in cases:
        got_status, body = await refusal(url + query)
        assert got_status == status, (query, body)
        assert reason in body, (query, body)
    # Refused before the upgrade: nothing reached the document.
    reader = await client(secured, params={"token": token(mode="read")})
    assert reader.text() == "original"
    for c in (writer, reader):
        await c.close()


async def test_expiry_has_a_few_seconds_of_leeway_and_no_more(secured: ServerProcess) -> None:
    just_expired = mint(SECRET, mode="read", ttl=-2, doc="doc")
    reader = await client(secured, params={"token": just_expired})
    await reader.close()
    long_expired = mint(SECRET, mode="read", ttl=-30, doc="doc")
    status, body = await refusal(f"{secured.ws_url}/doc?token={long_expired}")
    assert status == 401 and "expired" in body


async def test_a_token_minted_with_pyjwt_directly_works_as_header_or_parameter(
        secured: ServerProcess) -> None:
    claims = {"exp": int(time.time()) + 300, "doc_prefix": "team-a/", "mode": "write",
              "sub": "u-17", "name": "Ada"}
    raw = jwt.encode(claims, SECRET, algorithm="HS256")
    by_header = await client(secured, "team-a/notes", headers={"Authorization": f"Bearer {raw}"})
    by_param = await client(secured, "team-a/notes", params={"token": raw})
    await by_header.insert("from a backend's token")
    await by_param.wait_text("from a backend's token")
    status, body = await refusal(f"{secured.ws_url}/team-b/notes?token={raw}")
    assert status == 403 and "another document" in body
    for c in (by_header, by_param):
        await c.close()


async def test_a_read_token_sees_everything_and_changes_nothing_even_after_reconnecting(
        server_factory: ServerFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = f"sqlite:///{tmp_path / 'read.db'}"
    server = server_factory(store, env={"COLLAB_SECRET": SECRET})
    writer = await client(server, params={"token": token()})
    reader = await client(server, params={"token": token(mode="read")})
    await writer.insert("shared ")
    await reader.wait_text("shared ")
    assert reader.auth_messages() == [protocol.Auth(denied=True, reason="read-only")]
    await reader.insert("FORGED")  # sent: the server drops it
    await reader.drop()  # reconnects by itself and resends what the server lacks
    await reader.wait_for(lambda: reader.connections == 2 and reader.synced.is_set())
    await writer.insert("later")
    await reader.wait_for(lambda: "later" in reader.text())
    assert "FORGED" not in writer.text()
    assert reader.auth_messages() == [protocol.Auth(denied=True, reason="read-only")] * 2  # once each
    assert reader.close_codes == [1000]  # only the close it asked for: never closed by the server
    for c in (writer, reader):
        await c.close()
    assert server.terminate() == 0
    again = server_factory(store, env={"COLLAB_SECRET": SECRET})
    fresh = await client(again, params={"token": token(mode="read")})
    assert fresh.text() == "shared later"
    await fresh.close()


async def test_the_name_in_a_token_is_the_name_others_see_in_presence(secured: ServerProcess) -> None:
    ada = await client(secured, params={"token": token(name="Ada")})
    watcher = await client(secured, params={"token": token(mode="read")})
    state = protocol.AwarenessEntry(4242, 1, json.dumps({"user": {"name": "Root", "color": "#f00"}}))
    await ada.send_raw(protocol.encode_awareness(protocol.encode_awareness_payload([state])))

    def heard() -> list[protocol.AwarenessEntry]:
        return [e for m in watcher.received if isinstance(m, protocol.AwarenessUpdate)
                for e in protocol.decode_awareness_payload(m.payload) if e.client_id == 4242]

    await _until(lambda: bool(heard()))
    assert json.loads(heard()[-1].state) == {"user": {"name": "Ada", "color": "#f00"}}
    for c in (ada, watcher):
        await c.close()


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_pages_from_other_origins_are_refused(server_factory: ServerFactory) -> None:
    server = server_factory("memory://")
    url = f"{server.ws_url}/doc"
    for origin in ("http://evil.example", "null", "https://127.0.0.1.evil.example"):
        status, body = await refusal(url, origin=origin)
        assert status == 403 and "origin" in body, origin
    for origin in (f"http://127.0.0.1:{server.port}", "http://localhost:5173", None):
        async with websockets.connect(url, origin=origin) as ws:  # own origin, loopback, no browser
            assert isinstance(protocol.decode_message(await ws.recv()), protocol.SyncStep1)  # type: ignore[arg-type]


async def test_a_list_of_allowed_origins_replaces_loopback_but_never_the_own_origin(
        server_factory: ServerFactory) -> None:
    server = server_factory("memory://", args=["--allowed-origins", "https://app.example, https://b.example"])
    url = f"{server.ws_url}/doc"
    for origin in ("https://app.example", "https://b.example:443", f"http://127.0.0.1:{server.port}"):
        async with websockets.connect(url, origin=origin) as ws:
            await ws.recv()
    for origin in ("http://localhost:5173", "http://app.example", "https://evil.example"):
        assert (await refusal(url, origin=origin))[0] == 403, origin


async def test_a_stock_node_client_without_an_origin_works_with_a_token(secured: ServerProcess) -> None:
    async with js_clients() as js:
        writer = await js.start(secured.ws_url, "doc", params={"token": token()})
        reader = await js.start(secured.ws_url, "doc", params={"token": token(mode="read")})
        await writer.wait_synced()
        await reader.wait_synced()
        await writer.insert(0, "from node")
        await reader.wait_text("from node")
        await reader.insert(0, "nope ")
        await writer.insert(0, "more ")
        await reader.wait_text("more ")
        assert await writer.text() == "more from node"
        assert "read-only" in reader.stderr()  # the stock provider logs the auth message
        status = await js.start(secured.ws_url, "doc")  # no token: refused, no data
        with pytest.raises(AssertionError):
            await status.wait_synced(timeout=1.5)


async def test_metrics_are_private_with_a_secret(server_factory: ServerFactory) -> None:
    closed = server_factory("memory://", env={"COLLAB_SECRET": SECRET})
    assert http(closed.http_url + "/metrics")[0] == 403
    with_token = server_factory("memory://", env={"COLLAB_SECRET": SECRET,
                                                  "COLLAB_METRICS_TOKEN": "scrape-me"})
    assert http(with_token.http_url + "/metrics")[0] == 401
    assert http(with_token.http_url + "/metrics", {"Authorization": "Bearer wrong"})[0] == 401
    status, body = http(with_token.http_url + "/metrics", {"Authorization": "Bearer scrape-me"})
    assert status == 200 and "collab_admission_admitted_total" in body
    port = free_port()
    separate = server_factory("memory://", env={"COLLAB_SECRET": SECRET},
                              args=["--metrics-listen", f"127.0.0.1:{port}"])
    assert http(separate.http_url + "/metrics")[0] == 404
    assert http(f"http://127.0.0.1:{port}/metrics")[0] == 200
    assert http(f"http://127.0.0.1:{port}/readiness_check")[0] == 200
    assert http(f"http://127.0.0.1:{port}/d/some-doc")[0] == 404  # only metrics and health there


async def test_tokens_never_appear_in_the_log(server_factory: ServerFactory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = server_factory("memory://", env={"COLLAB_SECRET": SECRET, "COLLAB_LOG_LEVEL": "info"})
    secret_token = token()
    writer = await client(server, params={"token": secret_token})
    await writer.close()
    assert (await refusal(f"{server.ws_url}/other?token={secret_token}"))[0] == 403
    await _until(lambda: "[redacted]" in server.log())
    log = server.log()
    assert secret_token not in log and secret_token.split(".")[2] not in log
    assert SECRET not in log


def test_collab_token_prints_a_token_the_server_and_pyjwt_accept() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "collab", "token", "--doc", "a%2Fb", "--mode", "read", "--ttl", "2h",
         "--name", "Ann"], cwd=ROOT, env={"COLLAB_SECRET": SECRET, "PATH": ""},
        capture_output=True, text=True, timeout=30, check=True)
    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["doc"] == "a%2Fb" and claims["mode"] == "read" and claims["name"] == "Ann"
    assert 7190 < claims["exp"] - time.time() <= 7200
    missing = subprocess.run([sys.executable, "-m", "collab", "token", "--doc", "a", "--mode", "read",
                              "--ttl", "1h"], cwd=ROOT, env={"PATH": ""}, capture_output=True,
                             text=True, timeout=30)
    assert missing.returncode == 2 and "COLLAB_SECRET" in missing.stderr


async def test_the_http_fallback_goes_through_the_same_admission(secured: ServerProcess) -> None:
    writer = await client(secured, params={"token": token()})
    await writer.insert("via websocket")
    poller = await PollClient(f"{secured.http_url}/poll", "doc", client_id=5,
                              params={"token": token(mode="read")}).start()
    assert poller.text() == "via websocket" and poller.read_only
    http_client = HttpClient("127.0.0.1", secured.port, timeout=10)
    body = encode_body([protocol.encode_sync_step1(b"\x00")])
    for target, status in (("/poll/doc?client=abcdefgh", 401),
                           (f"/poll/other?client=abcdefgh&token={token()}", 403)):
        answer = await http_client.post(target, body)
        assert answer.status == status, (target, answer.body)
    http_client.close()
    await poller.close()
    await writer.close()


def share(server: ServerProcess, doc: str, bearer: str | None, body: object,
          method: str = "POST") -> tuple[int, object]:
    headers = {"Content-Type": "application/json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    data = json.dumps(body).encode() if method == "POST" else None
    request = urllib.request.Request(f"{server.http_url}/api/docs/{doc}/share", data=data,
                                     method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def claims_of(minted: str) -> dict[str, object]:
    return dict(jwt.decode(minted, SECRET, algorithms=["HS256"]))


async def test_share_links_are_minted_for_writers_never_wider_or_longer_than_theirs(
        server_factory: ServerFactory) -> None:
    server = server_factory("memory://", env={"COLLAB_SECRET": SECRET, "COLLAB_SHARE_MAX_TTL": "86400"})
    writer_token = mint(SECRET, mode="write", ttl=3600, doc_prefix="team/", name="Ada")
    status, terms = share(server, "team/plan", writer_token, None, method="GET")
    assert status == 200 and isinstance(terms, dict)
    assert (terms["signed"], terms["may_share"], terms["mode"]) == (True, True, "write")
    assert 3590 <= terms["max_ttl"] <= 3600  # type: ignore[operator]

    # A read-only link for a week, from a token with an hour left: an hour, for this document only.
    before = time.time()
    status, answer = share(server, "team/plan", writer_token, {"mode": "read", "ttl": "7d"})
    assert status == 200 and isinstance(answer, dict), answer
    assert answer["mode"] == "read" and answer["shortened"] is True
    claims = claims_of(str(answer["token"]))
    assert claims["doc"] == "team/plan" and "doc_prefix" not in claims
    assert claims["mode"] == "read" and "name" not in claims  # the visitor is not the sharer
    assert before + 3590 <= claims["exp"] <= claims_of(writer_token)["exp"]  # type: ignore[operator]
    reader = await PyClient(server.ws_url, "team/plan", params={"token": str(answer["token"])}).start()
    await reader.wait_for(lambda: len(reader.auth_messages()) == 1)  # told it is read-only
    status, _body = await refusal(f"{server.ws_url}/team/other?token={answer['token']}")
    assert status == 403  # the writer's prefix is not passed on
    await reader.close()
    # An edit link within the limits is granted as asked; the server's own cap applies too.
    status, answer = share(server, "team/plan", writer_token, {"mode": "write", "ttl": 600})
    assert status == 200 and answer["shortened"] is False  # type: ignore[index]
    assert claims_of(str(answer["token"]))["mode"] == "write"  # type: ignore[index]
    long_writer = mint(SECRET, mode="write", ttl=30 * 86400, doc="team/plan")
    status, answer = share(server, "team/plan", long_writer, {"mode": "write", "ttl": "30d"})
    assert status == 200 and answer["shortened"] is True  # type: ignore[index]
    assert claims_of(str(answer["token"]))["exp"] <= time.time() + 86400 + 1  # type: ignore[index, operator]

    # Readers cannot share; nobody without a token can; bad requests say why.
    reader_token = mint(SECRET, mode="read", ttl=3600, doc="team/plan")
    status, terms = share(server, "team/plan", reader_token, None, method="GET")
    assert status == 200 and terms["may_share"] is False  # type: ignore[index]
    assert share(server, "team/plan", reader_token, {"mode": "read", "ttl": 60})[0] == 403
    assert share(server, "team/plan", None, {"mode": "read", "ttl": 60})[0] == 401
    assert share(server, "elsewhere", writer_token, {"mode": "read", "ttl": 60})[0] == 403
    for body, reason in (({"mode": "admin", "ttl": 60}, "mode must be read or write"),
                         ({"mode": "read", "ttl": "soon"}, "ttl: 'soon' is not a duration"),
                         ({"mode": "read", "ttl": -5}, "ttl: "),
                         ([1, 2], "must be a JSON object")):
        status, text = share(server, "team/plan", writer_token, body)
        assert status == 400 and reason in str(text), (body, text)


def test_an_open_server_makes_no_share_links(server: ServerProcess) -> None:
    status, terms = share(server, "doc", None, None, method="GET")
    assert status == 200 and terms["signed"] is False and terms["may_share"] is False  # type: ignore[index]
    status, text = share(server, "doc", None, {"mode": "read", "ttl": 60})
    assert status == 404 and "no secret" in str(text)


def api(server: ServerProcess, method: str, path: str, bearer: str | None = None,
        body: bytes | None = None) -> tuple[int, bytes]:
    """One document API request: its status and body."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    request = urllib.request.Request(server.http_url + path, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def test_every_document_api_call_needs_a_token_for_its_document_and_mode(
        secured: ServerProcess) -> None:
    writer = await client(secured, params={"token": token()})
    await writer.insert("original")

    def call(method: str, path: str, bearer: str | None = None,
             body: bytes | None = None) -> tuple[int, bytes]:
        return api(secured, method, path, bearer, body)

    edit = crdt.Document().edit_text(0, "via the API ") or b""
    read, write = token(mode="read"), token()
    refused = [
        (("GET", "/api/docs/doc"), 401),
        (("GET", "/api/docs/doc", token(doc="other")), 403),
        (("GET", "/api/docs/doc/update", tampered(read)), 401),
        (("POST", "/api/docs/doc/update", None, edit), 401),
        (("POST", "/api/docs/doc/update", read, edit), 403),
        (("POST", "/api/docs/doc/update", token(doc="other"), edit), 403),
        (("DELETE", "/api/docs/doc", read), 403),
        (("GET", "/api/docs", write), 403),  # a token for one document lists nothing
    ]
    for args, status in refused:
        got, body = await asyncio.to_thread(call, *args)
        assert got == status, (args[:2], got, body)
    assert await asyncio.to_thread(call, "GET", "/api/docs/doc", read) == (200, b"original")
    assert writer.text() == "original"  # nothing refused reached the document
    assert (await asyncio.to_thread(call, "POST", "/api/docs/doc/update", write, edit))[0] == 204
    # A concurrent insert at the same place: Yjs orders the two by client id.
    await writer.wait_for(lambda: sorted(writer.text().split("original")) == ["", "via the API "])
    everything = mint(SECRET, mode="read", ttl=60, doc_prefix="")
    status, listing = await asyncio.to_thread(call, "GET", "/api/docs", everything)
    assert status == 200 and "documents" in json.loads(listing)
    await writer.close()


async def test_an_open_server_says_so_at_start_and_a_secured_one_does_not(
        server_factory: ServerFactory) -> None:
    open_server = server_factory("memory://")
    assert "no COLLAB_SECRET: the server is open" in open_server.log()
    secured = server_factory("memory://", env={"COLLAB_SECRET": SECRET})
    assert "COLLAB_SECRET" not in secured.log()
