"""Versions: kept apart from the compacted document on SQLite, PostgreSQL and the in-memory
store (listed, read, pruned by age, dropped with the document, untouched by compaction), taken
after bursts of editing and on request, and served by the document API."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from collab import crdt
from collab.store import Store, open_store
from collab.store.postgres import SCHEMA_VERSION, migrate
from collab.versions import Bursts, presence_name
from tests.pyclient import PyClient
from tests.servers import ServerProcess
from tests.services import fresh_database, wait_until

ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with fresh_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'collab.db'}" if request.param == "sqlite" else "memory://"


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    store = open_store(url, commit_window=0.002, compact_threshold=10_000)
    await store.open()
    yield store
    await store.close()


def state_with(text: str) -> bytes:
    doc = crdt.Document()
    doc.edit_text(0, insert=text)
    return doc.full_state()


async def test_versions_are_kept_listed_read_and_pruned(store: Store) -> None:
    name = f"doc-{time.monotonic_ns()}"
    now = time.time()
    one = state_with("one")
    old = await store.add_version(name, one, authors=["Ada"], at=now - 3600)
    named = await store.add_version(name, state_with("two"), kind="named", label="Draft",
                                    authors=["Ada", "Bob"], at=now - 1800)
    recent = await store.add_version(name, state_with("three"), at=now - 10)
    await store.add_version(f"{name}-other", state_with("elsewhere"), at=now)
    assert old.id < named.id < recent.id

    listed = await store.versions(name)
    assert [v.id for v in listed] == [recent.id, named.id, old.id]  # newest first
    assert listed[1].kind == "named" and listed[1].label == "Draft" and listed[1].authors == ("Ada", "Bob")
    assert abs(listed[2].created_at - (now - 3600)) < 0.01 and listed[2].size == len(one)
    assert [v.id for v in await store.versions(name, before=recent.id, limit=1)] == [named.id]
    found = await store.version(name, old.id)
    assert found is not None and crdt.document_from([found[1]]).text() == "one"
    assert await store.version(f"{name}-other", old.id) is None  # versions belong to their document

    # Automatic versions past the retention go; named ones and the newest stay.
    assert await store.prune_versions(name, older_than=now - 60) == 1
    assert [v.id for v in await store.versions(name)] == [recent.id, named.id]
    assert await store.prune_versions(name, older_than=now + 60) == 0  # the newest is kept

    # Compaction rewrites the log and the snapshot, never the versions.
    for i in range(5):
        await store.append(name, crdt.Document().edit_text(0, insert=f"x{i}") or b"")
    await store.compact(name)
    assert [v.id for v in await store.versions(name)] == [recent.id, named.id]
    # Deleting the document drops its versions; other documents keep theirs.
    assert await store.delete(name)
    assert await store.versions(name) == []
    assert len(await store.versions(f"{name}-other")) == 1
    with pytest.raises(ValueError, match="auto or named"):
        await store.add_version(name, b"", kind="weekly")


async def test_a_postgres_store_of_the_release_before_gains_the_versions_table(postgres_url: str) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        await migrate(conn)
        # As the release before left it: no versions table, schema version 2.
        await conn.execute("DROP TABLE collab_versions")
        await conn.execute("DELETE FROM collab_schema WHERE version >= 3")
        assert await migrate(conn) == SCHEMA_VERSION
        assert await conn.fetchval("SELECT to_regclass('collab_versions') IS NOT NULL")
        assert await migrate(conn) == SCHEMA_VERSION  # once only
    finally:
        await conn.close()


def test_bursts_end_after_a_quiet_spell_or_every_few_minutes() -> None:
    bursts = Bursts(quiet=10, every=300)
    assert bursts.due(0) == []
    bursts.edited("a", 0).authors.setdefault("Ada", None)
    bursts.edited("a", 5).authors.setdefault("Bob", None)
    assert bursts.due(14) == []
    assert bursts.due(15) == ["a"]
    assert bursts.take("a") == ("Ada", "Bob")
    assert bursts.due(100) == [] and bursts.take("a") == ()
    # Typing without a pause still leaves a version every `every` seconds.
    for second in range(0, 301, 5):
        bursts.edited("b", second)
        if second < 300:
            assert bursts.due(second) == []
    assert bursts.due(300) == ["b"]


def test_presence_names() -> None:
    assert presence_name(json.dumps({"user": {"name": " Ada ", "color": "#fff"}})) == "Ada"
    for state in ("null", "[]", "{}", '{"user": 3}', '{"user": {"name": ""}}', "not json"):
        assert presence_name(state) is None, state


def api(method: str, url: str, body: object | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, object]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, json.loads(raw) if "json" in kind else raw
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_versions_are_taken_after_bursts_and_on_request_and_served(
        server_factory: ServerFactory, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'versions.db'}"
    server = server_factory(store, args=["--version-quiet", "0.3", "--version-interval", "60"])
    base = f"{server.http_url}/api/docs/plan/versions"
    writer = await PyClient(server.ws_url, "plan").start()
    await writer.insert("first draft")

    def versions() -> list[dict[str, object]]:
        status, answer = api("GET", base)
        assert status == 200, answer
        return list(answer["versions"])  # type: ignore[index]

    await wait_until(lambda: len(versions()) == 1, timeout=10)
    await writer.insert(", second thoughts")
    await wait_until(lambda: len(versions()) == 2, timeout=10)
    status, named = api("POST", base, {"label": "  Before   the review "})
    assert status == 201 and isinstance(named, dict), named
    assert named["kind"] == "named" and named["label"] == "Before the review"
    listed = versions()
    assert [v["kind"] for v in listed] == ["named", "auto", "auto"]
    first = listed[-1]
    status, one = api("GET", f"{base}/{first['id']}")
    assert status == 200 and one["text"] == "first draft" and one["title"] == ""  # type: ignore[index]
    status, update = api("GET", f"{base}/{first['id']}?format=update")
    assert status == 200 and crdt.document_from([update]).text() == "first draft"  # type: ignore[list-item]
    assert api("GET", f"{base}/999999")[0] == 404
    for body, reason in (({"label": ""}, "label must be"), ({"label": "x" * 201}, "label must be"),
                         ([1], "label must be")):
        status, text = api("POST", base, body)
        assert status == 400 and reason in str(text), text
    assert api("GET", f"{base}?before=x")[0] == 400
    await writer.close()

    assert server.terminate() == 0

    # Stopping keeps the burst still open (a long quiet spell: only the stop takes it), and the
    # versions outlive the process.
    quiet = server_factory(store, args=["--version-quiet", "600"])
    writer = await PyClient(quiet.ws_url, "plan").start()
    await writer.insert(" and a last word")
    final = "first draft, second thoughts and a last word"
    await wait_until(lambda: api("GET", f"{quiet.http_url}/api/docs/plan")[1] == final.encode(), timeout=10)
    await writer.close()
    assert len(api("GET", f"{quiet.http_url}/api/docs/plan/versions")[1]["versions"]) == 3  # type: ignore[index]
    assert quiet.terminate() == 0
    again = server_factory(store)
    status, answer = api("GET", f"{again.http_url}/api/docs/plan/versions")
    newest = answer["versions"][0]  # type: ignore[index]
    assert newest["kind"] == "auto"
    assert api("GET", f"{again.http_url}/api/docs/plan/versions/{newest['id']}")[1]["text"] == final  # type: ignore[index]
    # Deleting the document deletes its versions.
    assert api("DELETE", f"{again.http_url}/api/docs/plan")[0] == 204
    assert api("GET", f"{again.http_url}/api/docs/plan/versions")[1] == {"versions": [], "next": None}
