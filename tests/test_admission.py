"""Admission and the table of close codes, without a server."""

from __future__ import annotations

import re
import time
from pathlib import Path

import jwt
import pytest

from collab import codes
from collab.admission import WRITE, Access, AccessRequest, Admission, ConnectionLimits, OriginPolicy, Refused
from collab.app import Collab
from collab.config import Settings
from collab.limits import TokenBucket
from collab.tokens import TokenAuthorizer, mint, parse_ttl

DOCS = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def test_the_documented_table_is_the_table_in_the_code() -> None:
    text = DOCS.read_text()
    section = text[text.index("## Close codes and HTTP statuses"):]
    rows = re.findall(r"^\| (?!meaning|---)(.+?) \| (\S+) \| (\S+) \|$", section, re.MULTILINE)

    def number(cell: str) -> int | None:
        return None if cell == "—" else int(cell)

    documented = [codes.Outcome(number(close), number(http), meaning) for meaning, close, http in rows]
    assert documented == list(codes.TABLE)


def test_close_reasons_fit_a_close_frame_and_are_cut_at_a_word() -> None:
    long = "document too large: " + "word " * 40
    cut = codes.close_reason(long)
    assert len(cut.encode()) <= 123 and cut.endswith("...") and not cut.endswith(" ...")
    assert codes.close_reason("short") == "short"
    assert len(codes.close_reason("é" * 100).encode()) <= 123


def request(document: str = "doc", **kwargs: object) -> AccessRequest:
    return AccessRequest(document, "websocket", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "reason"), [
    ("", "empty"),
    ("x" * 256, "longer than 255"),
    ("a%0Ab", "control characters"),
    ("a\x7fb", "control characters"),
])
async def test_invalid_document_names_are_refused_with_400(name: str, reason: str) -> None:
    with pytest.raises(Refused) as refused:
        await Admission().admit(request(name))
    assert (refused.value.status, refused.value.close_code) == (400, 1008)
    assert reason in refused.value.reason


async def test_without_a_secret_everyone_may_write() -> None:
    access = await Admission().admit(request("a%2Fb"))
    assert access.may_write and access == WRITE


async def test_an_instance_that_stopped_taking_clients_refuses_with_503() -> None:
    with pytest.raises(Refused) as refused:
        await Admission(is_accepting=lambda: False).admit(request())
    assert refused.value.status == 503 and refused.value.close_code == 1012


async def test_an_authorizer_decides_and_none_means_forbidden() -> None:
    seen: list[AccessRequest] = []

    async def authorize(req: AccessRequest) -> Access | None:
        seen.append(req)
        return Access("read", {"name": "Ann"}) if req.cookies.get("session") == "ok" else None

    admission = Admission(authorize)
    access = await admission.admit(request(cookies={"session": "ok"}))
    assert access.mode == "read" and not access.may_write and access.user == {"name": "Ann"}
    with pytest.raises(Refused) as refused:
        await admission.admit(request())
    assert refused.value.status == 403 and refused.value.close_code == 4403
    assert len(seen) == 2


def test_a_request_from_an_asgi_scope_has_lower_case_headers_cookies_and_query() -> None:
    scope = {
        "headers": [(b"Origin", b"http://a.example"), (b"cookie", b"session=abc; theme=dark")],
        "query_string": b"acks=1&token=t1&token=t2",
        "client": ("127.0.0.1", 5000),
    }
    req = AccessRequest.from_scope(scope, "doc", "websocket")
    assert req.headers["origin"] == "http://a.example"
    assert req.cookies == {"session": "abc", "theme": "dark"}
    assert req.query == {"acks": "1", "token": "t2"}
    assert req.client == ("127.0.0.1", 5000)


@pytest.mark.parametrize(("origin", "host", "allowed", "expected"), [
    (None, "h.example", (), True),  # not a browser: the token decides
    ("https://h.example", "h.example", (), True),  # the server's own origin
    ("https://h.example", "h.example:443", (), True),
    ("http://h.example:8080", "h.example:8080", (), True),
    ("http://h.example:8081", "h.example:8080", (), False),
    ("http://localhost:5173", "h.example", (), True),  # loopback pages, by default only
    ("http://[::1]:3000", "h.example", (), True),
    ("http://localhost.evil.example", "h.example", (), False),
    ("http://evil.example", "h.example", (), False),
    ("null", "h.example", (), False),
    ("null", "h.example", ("null",), True),
    ("http://localhost:5173", "h.example", ("https://app.example",), False),
    ("https://app.example", "h.example", ("https://app.example:443",), True),
    ("https://h.example", "h.example", ("https://app.example",), True),
    ("garbage", "h.example", (), False),
    ("http://evil.example", "h.example", ("*",), True),
])
def test_origin_policy(origin: str | None, host: str, allowed: tuple[str, ...], expected: bool) -> None:
    assert OriginPolicy(allowed).allows(origin, host) is expected


async def test_connection_slots_are_taken_per_document_address_and_instance() -> None:
    limits = ConnectionLimits(per_instance=4, per_document=2, per_address=2)
    admission = Admission(limits=limits)
    a = await admission.admit(request("a", client=("10.0.0.1", 1)))
    await admission.admit(request("b", client=("10.0.0.1", 2)))
    await admission.admit(request("a", client=("10.0.0.2", 1)))
    for doc, address, reason in (("a", "10.0.0.3", "document"), ("c", "10.0.0.1", "address")):
        with pytest.raises(Refused) as refused:
            await admission.admit(request(doc, client=(address, 1)))
        assert refused.value.status == 503 and refused.value.close_code == 4503
        assert reason in refused.value.reason
    await admission.admit(request("c", client=("10.0.0.3", 1)))
    with pytest.raises(Refused, match="full"):
        await admission.admit(request("d", client=("10.0.0.4", 1)))
    api = await admission.admit(AccessRequest("d", "api"))  # one-off calls hold no slot
    assert api.slot is None
    a.release()
    a.release()  # once only
    assert limits.total == 3 and limits.by_document == {"a": 1, "b": 1, "c": 1}
    assert limits.by_address == {"10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.3": 1}
    await admission.admit(request("d", client=("10.0.0.1", 1)))
    assert admission.stats.refused_full == 3 and admission.stats.admitted == 6


def test_a_token_bucket_delays_past_the_rate_and_calls_a_long_flood_a_flood() -> None:
    bucket = TokenBucket(rate=10, burst=5, patience=2.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(5)] == [0.0] * 5  # the burst
    assert bucket.take(0.0) == pytest.approx(0.1)
    now, waited = 0.1, 0.0
    while now < 2.05:  # held to the rate, with the server reading a little late each time
        wait = bucket.take(now)
        waited += wait
        now += wait + 0.03
    assert waited > 1.0 and bucket.flooding(now)
    bucket.take(now + 3.0)  # a pause that wins back the burst ends it
    assert not bucket.flooding(now + 3.1)


async def test_signed_tokens_are_checked_claim_by_claim() -> None:
    secret = "k" * 32
    authorize = TokenAuthorizer(secret)

    async def decide(token: str, document: str = "doc") -> Access:
        return await authorize(AccessRequest(document, "websocket", query={"token": token}))

    granted = await decide(mint(secret, mode="read", ttl=60, doc="doc", sub="u1", name="Ann"))
    assert granted.mode == "read" and granted.user == {"sub": "u1", "name": "Ann"}
    prefixed = await decide(mint(secret, mode="write", ttl=60, doc_prefix="team/"), "team/x")
    assert prefixed.may_write
    header = await authorize(AccessRequest("doc", "websocket", headers={
        "authorization": "Bearer " + mint(secret, mode="write", ttl=60, doc="doc")}))
    assert header.may_write
    assert await decide(mint(secret, mode="read", ttl=-3, doc="doc"))  # within the leeway
    bad = {
        "expired": mint(secret, mode="read", ttl=-10, doc="doc"),
        "another document": mint(secret, mode="read", ttl=60, doc="doc2"),
        "bad signature": mint("j" * 32, mode="read", ttl=60, doc="doc"),
        "doc or doc_prefix": jwt.encode({"exp": time.time() + 60, "mode": "read", "doc": "doc",
                                         "doc_prefix": "d"}, secret),
        "none": jwt.encode({"exp": time.time() + 60, "mode": "read", "doc": "doc"}, None, "none"),
    }
    for label, token in bad.items():
        with pytest.raises(Refused) as refused:
            await decide(token)
        assert refused.value.status in (401, 403), label
    assert "secret" not in repr(authorize) and secret not in repr(authorize)
    for text, seconds in (("90", 90), ("90s", 90), ("15m", 900), ("1h", 3600), ("2d", 172800)):
        assert parse_ttl(text) == seconds
    for text in ("1w", "-5", "0", "soon"):
        with pytest.raises(ValueError):
            parse_ttl(text)


def test_an_open_server_says_so_louder_beyond_loopback() -> None:
    local = Collab(Settings(store="memory://", host="127.0.0.1")).open_warning()
    public = Collab(Settings(store="memory://", host="0.0.0.0")).open_warning()
    assert local is not None and "open" in local and "NETWORK" not in local
    assert public is not None and "OPEN TO THE NETWORK" in public and "0.0.0.0" in public
    assert Collab(Settings(store="memory://", host="0.0.0.0", secret="s" * 32)).open_warning() is None




async def test_held_connections_are_decided_again_when_due_and_told_what_changed() -> None:
    from collab.admission import Holder

    grants: dict[str, Access | None] = {"ada": WRITE, "bob": WRITE, "cy": WRITE}
    failing = {"flag": False}

    async def authorize(request: AccessRequest) -> Access | None:
        if failing["flag"]:
            raise ConnectionError("the session store is down")
        grant = grants[request.document]
        if isinstance(grant, Exception):
            raise grant
        return grant

    class Told(Holder):
        def __init__(self) -> None:
            self.events: list[object] = []

        def withdrawn(self, refused: Refused) -> None:
            self.events.append((refused.close_code, refused.reason))

        def changed(self, access: Access) -> None:
            self.events.append(access.mode)

    admission = Admission(authorize, recheck_interval=60)
    told = {name: Told() for name in grants}
    held = {}
    for name in grants:
        request = AccessRequest(name, "websocket")
        held[name] = admission.hold(request, await admission.admit(request), told[name])
    grants["ada"] = None
    grants["bob"] = Access("read", {"name": "Bob"})
    grants["cy"] = Refused(codes.UNAUTHORIZED, "session expired")  # type: ignore[assignment]
    await admission.recheck_due(time.monotonic())  # none due yet
    assert all(not t.events for t in told.values()) and admission.stats.rechecks == 0
    await admission.recheck_due(time.monotonic() + 61)
    assert told["ada"].events == [(4403, "access withdrawn")]
    assert told["bob"].events == ["read"]
    assert told["cy"].events == [(4401, "session expired")]
    assert admission.held == {held["bob"]}  # the withdrawn are let go
    assert (admission.stats.withdrawn, admission.stats.access_changed) == (2, 1)
    failing["flag"] = True  # an authorizer that fails decides nothing: the connection stays
    await admission.recheck_due(time.monotonic() + 200)
    assert admission.held == {held["bob"]} and admission.stats.recheck_errors == 1
    admission.let_go(held["bob"])
    assert not admission.held
    assert Admission(authorize).hold(AccessRequest("ada", "websocket"), WRITE, told["ada"]) is None


def test_every_setting_and_counter_the_limits_table_names_exists() -> None:
    from dataclasses import fields

    from collab.admission import AdmissionStats
    from collab.room import RoomStats
    from collab.transport.guard import GuardStats
    from collab.transport.poll import PollStats
    from collab.transport.websocket import SocketStats

    parts = {"admission": AdmissionStats, "rooms": RoomStats, "websocket": SocketStats,
             "poll": PollStats, "requests": GuardStats}
    text = DOCS.read_text()
    section = text[text.index("## Limits"):text.index("## Close codes and HTTP statuses")]
    named = re.findall(r"`(\w+)\.(\w+)`", section)
    assert len(named) >= 12
    for part, counter in named:
        assert counter in {f.name for f in fields(parts[part])}, f"{part}.{counter}"
    settings = {option.env for _name, option, _default in Settings.options()}
    for variable in re.findall(r"`(COLLAB_\w+)`", section):
        assert variable in settings, variable
