"""Admission and the table of close codes, without a server."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collab import codes
from collab.admission import WRITE, Access, AccessRequest, Admission, Refused

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
