"""``collab ls``, ``export``, ``import`` and ``rm``: documents for operators and scripts.

Two ways to reach the documents, one interface (:class:`Documents`):

- ``--server URL``: through the document API of a running server. This is the way while the
  service runs: an import reaches the live clients and the other instances at once, a removal
  closes the clients of the document everywhere, and access rules apply (``--token``).
- ``--store URL`` (or ``COLLAB_STORE``, the default): the store directly, for backups and
  restores, scripts and a stopped service. A running server does not see an import until the
  document is next loaded, and the clients of a removed document are refused when they next
  connect rather than closed now.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from collab import crdt
from collab.config import Settings, redact_url

T = TypeVar("T")


class Problem(Exception):
    """What went wrong, in one line for people."""


class NotFound(Problem):
    pass


class Deleted(Problem):
    pass


class Documents:
    """Documents of a server or a store."""

    def list(self) -> Iterator[dict[str, Any]]:
        """Every document: ``name``, ``size`` (bytes stored), ``last_change`` (ISO 8601 or None)."""
        raise NotImplementedError

    def state(self, name: str) -> bytes:
        """The whole document as one Yjs update; :class:`NotFound` or :class:`Deleted`."""
        raise NotImplementedError

    def apply(self, name: str, update: bytes, *, recreate: bool = False) -> None:
        """Apply and store an update (``recreate``: use a deleted name again)."""
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError


class ServerDocuments(Documents):
    """Through the document API of a running server (``http://HOST:PORT``, any prefix)."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.base = base_url.rstrip("/") + "/api/docs"
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout

    def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        request = urllib.request.Request(self.base + path, data=body, method=method, headers={
            **self.headers, **({"Content-Type": "application/octet-stream"} if body is not None else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as error:
            reason = error.read().decode("utf-8", "replace").strip() or error.reason
            kind = {404: NotFound, 410: Deleted}.get(error.code, Problem)
            raise kind(f"the server answered {error.code}: {reason}") from None
        except (urllib.error.URLError, OSError) as error:
            cause = getattr(error, "reason", error)
            raise Problem(f"cannot reach {self.base}: {cause}") from None

    @staticmethod
    def _name(name: str) -> str:
        # The name goes in the path exactly as in /ws/<name>: already percent-encoded.
        return "/" + name

    def list(self) -> Iterator[dict[str, Any]]:
        after: str | None = None
        while True:
            query = "?limit=1000" + (f"&after={urllib.parse.quote(after, safe='')}" if after else "")
            page = json.loads(self._call("GET", query))
            yield from page["documents"]
            after = page.get("next")
            if not after:
                return

    def state(self, name: str) -> bytes:
        return self._call("GET", self._name(name) + "/update")

    def apply(self, name: str, update: bytes, *, recreate: bool = False) -> None:
        self._call("POST", self._name(name) + "/update" + ("?recreate=1" if recreate else ""), update)

    def delete(self, name: str) -> None:
        self._call("DELETE", self._name(name))


COMMAND_STORE_WAIT = 10.0
"""Seconds a command waits for a store that refuses its write before it gives up."""


class StoreDocuments(Documents):
    """The store itself (SQLite file, PostgreSQL database)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _with_store(self, work: Callable[[Any], Awaitable[T]]) -> T:
        from collab.store import UnsupportedStore, open_store

        if self.url.startswith("sqlite:///") and not Path(self.url[len("sqlite:///"):]).is_file():
            raise Problem(f"no SQLite store at {self.url[len('sqlite:///'):]}")

        async def run() -> T:
            store = open_store(self.url)
            await store.open()
            try:
                return await work(store)
            finally:
                await store.close(timeout=0)  # a write it gave up on is not retried on

        try:
            return asyncio.run(run())
        except Problem:
            raise
        except UnsupportedStore as exc:
            raise Problem(str(exc)) from exc
        except Exception as exc:
            reason = str(exc) or type(exc).__name__
            raise Problem(f"cannot use the store {redact_url(self.url)}: {reason}") from exc

    def list(self) -> Iterator[dict[str, Any]]:
        async def everything(store: Any) -> list[Any]:
            found, after = [], None
            while page := await store.list(after, 1000):
                found.extend(page)
                after = page[-1].name
            return found

        for info in self._with_store(everything):
            yield {"name": info.name, "size": info.size, "last_change": _iso(info.changed_at)}

    def state(self, name: str) -> bytes:
        async def load(store: Any) -> Any:
            return await store.load(name)

        stored = self._with_store(load)
        if stored.deleted:
            raise Deleted(f"document {name!r} was deleted")
        if not stored.updates:
            raise NotFound(f"no document named {name!r} in {redact_url(self.url)}")
        try:
            return stored.document(live=False).full_state()
        except crdt.DamagedDocument as damage:
            raise Problem(f"document {name!r} is damaged in the store: {damage.reason} "
                          "(nothing exported; `collab db check` lists every damaged document)") from damage

    def apply(self, name: str, update: bytes, *, recreate: bool = False) -> None:
        crdt.Document().apply(update)  # refuse what the engine refuses before storing it

        async def append(store: Any) -> None:
            stored = await store.load(name)
            if stored.deleted:
                if not recreate:
                    raise Deleted(f"document {name!r} was deleted")
                await store.revive(name)
            store.append(name, update)
            if not await store.flush(timeout=COMMAND_STORE_WAIT):  # it would retry for ever
                raise Problem(f"the store refuses the update: {store.failing}")

        self._with_store(append)

    def delete(self, name: str) -> None:
        async def delete(store: Any) -> bool:
            if (await store.load(name)).deleted:
                raise Deleted(f"document {name!r} was already deleted")
            return bool(await store.delete(name))

        if not self._with_store(delete):
            raise NotFound(f"no document named {name!r} in {redact_url(self.url)}")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the commands ---------------------------------------------------------------------------


def _documents(args: argparse.Namespace) -> Documents:
    if args.server:
        return ServerDocuments(args.server, args.token)
    overrides = {"store": args.store} if args.store else {}
    try:
        settings = Settings.from_env(**overrides)
    except ValueError as exc:
        raise Problem(str(exc)) from exc
    return StoreDocuments(settings.store)


def ls(args: argparse.Namespace) -> int:
    entries = list(_documents(args).list())
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    width = max([len(e["name"]) for e in entries] + [4])
    for entry in entries:
        print(f"{entry['name']:<{width}}  {entry['size']:>10}  {entry['last_change'] or '-'}")
    return 0


def export(args: argparse.Namespace) -> int:
    documents = _documents(args)
    if args.name is None:  # the listing of names, as before `collab ls` existed
        for entry in documents.list():
            print(entry["name"])
        return 0
    state = documents.state(args.name)
    if args.format == "yjs":
        sys.stdout.buffer.write(state)
    else:
        sys.stdout.write(crdt.document_from([state]).text(args.field))
    return 0


def import_(args: argparse.Namespace) -> int:
    """Yjs updates are merged (CRDT: nothing already there is lost); text becomes the document's
    text (refused over existing text unless --replace). A deleted name is used again."""
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    kind = args.format if args.format != "auto" else _kind_of(data)
    documents = _documents(args)
    if kind == "yjs":
        documents.apply(args.name, data, recreate=True)
        print(f"collab: merged {len(data)} bytes of Yjs update into {args.name!r}", file=sys.stderr)
        return 0
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(f"{args.file} is neither UTF-8 text nor a Yjs update") from None
    try:
        doc = crdt.document_from([documents.state(args.name)])
    except (NotFound, Deleted):
        doc = crdt.Document()
    current = doc.text()
    if current == text:
        print(f"collab: {args.name!r} already holds that text", file=sys.stderr)
        return 0
    if current and not args.replace:
        raise Problem(f"{args.name!r} already has {len(current)} characters: --replace replaces its "
                      "text (collaborators see the change), or import a Yjs update to merge")
    update = doc.edit_text(0, insert=text, delete=len(current.encode("utf-8")))  # engine: bytes
    documents.apply(args.name, update or crdt.EMPTY_UPDATE, recreate=True)
    print(f"collab: {args.name!r} now holds {len(text)} characters", file=sys.stderr)
    return 0


def _kind_of(data: bytes) -> str:
    """A Yjs update the engine accepts and that holds something, else text."""
    doc = crdt.Document()
    if data and not doc.load([data]) and doc.state_vector() != b"\x00":
        return "yjs"
    return "text"


def rm(args: argparse.Namespace) -> int:
    _documents(args).delete(args.name)
    print(f"collab: deleted {args.name!r}", file=sys.stderr)
    return 0


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except Problem as exc:
            print(f"collab: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            print(f"collab: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "),
                  file=sys.stderr)
            return 1

    run.__doc__ = command.__doc__
    return run


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--server", metavar="URL",
                       help="a running server, e.g. http://127.0.0.1:8080: its document API (use this "
                            "while the service runs, so clients and other instances see the change)")
    where.add_argument("--store", metavar="URL",
                       help="the store directly (default: COLLAB_STORE, else sqlite:///./data/collab.db)")
    parser.add_argument("--token", help="access token for --server (when the server has a secret)")


def add_commands(commands: Any) -> None:
    """``ls``, ``export``, ``import`` and ``rm`` on the CLI's subcommands."""
    listing = commands.add_parser("ls", help="list documents: name, bytes stored, last change")
    listing.add_argument("--json", action="store_true", help="print JSON")
    _target_arguments(listing)
    listing.set_defaults(func=_guarded(ls))

    exporting = commands.add_parser(
        "export", help="print a document as text or as a Yjs update (without a name: list the names)")
    exporting.add_argument("name", nargs="?", help="document name, as in /ws/<name>")
    exporting.add_argument("--format", choices=("text", "yjs"), default="text",
                           help="plain text of the shared text, or the full Yjs update")
    exporting.add_argument("--field", default="text", help="shared text field to print")
    _target_arguments(exporting)
    exporting.set_defaults(func=_guarded(export))

    importing = commands.add_parser(
        "import", help="load a file into a document: a Yjs update is merged, text becomes its text",
        description=import_.__doc__)
    importing.add_argument("name", help="document name, as in /ws/<name>")
    importing.add_argument("file", help="file to read (- for standard input)")
    importing.add_argument("--format", choices=("auto", "text", "yjs"), default="auto",
                           help="what the file holds (auto: a Yjs update if it is one, else text)")
    importing.add_argument("--replace", action="store_true", help="replace existing text")
    _target_arguments(importing)
    importing.set_defaults(func=_guarded(import_))

    removing = commands.add_parser(
        "rm", help="delete a document (clients are closed; reconnecting does not bring it back)")
    removing.add_argument("name", help="document name, as in /ws/<name>")
    _target_arguments(removing)
    removing.set_defaults(func=_guarded(rm))
