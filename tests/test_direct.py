"""The direct WebSocket layer's own parts: server frames, the frame cache, the lean queue and
flag that stand in for uvicorn's asyncio.Queue and asyncio.Event."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Frame, Opcode

from collab.transport.direct import FRAME_CACHE_MAX, Flag, FrameCache, Mailbox, frame_binary


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_frame_is_what_websockets_serializes(size: int) -> None:
    message = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = Frame(Opcode.BINARY, message).serialize(mask=False, extensions=[])
    assert frame_binary(message) == expected


def test_the_cache_frames_a_broadcast_once_and_keeps_no_large_message() -> None:
    cache = FrameCache()
    message = b"\x00\x02\x03abc"
    first = cache.frame(message)
    assert cache.frame(message) is first  # the same bytes object for every receiver
    other = b"\x00\x02\x03abd"
    assert cache.frame(other) == frame_binary(other)
    large = bytes(FRAME_CACHE_MAX + 1)
    assert cache.frame(large) == frame_binary(large)
    assert cache.message is other  # a large one is not kept alive


async def test_the_mailbox_keeps_order_and_says_when_it_is_empty() -> None:
    box = Mailbox(asyncio.get_running_loop())
    assert box.empty()
    box.put_nowait(1)
    box.put_nowait(2)
    assert not box.empty()
    assert await box.get() == 1
    assert await box.get() == 2
    assert box.empty() and box.items is None  # nothing held while nothing waits
    getter = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    assert not getter.done()
    box.put_nowait(3)
    assert not box.empty()  # until the getter runs, as an asyncio.Queue
    assert await asyncio.wait_for(getter, 5) == 3
    waiting = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    box.put_nowait(4)
    assert await box.get() == 4


async def test_the_flag_wakes_a_waiting_writer() -> None:
    flag = Flag(asyncio.get_running_loop())
    assert flag.is_set()
    await asyncio.wait_for(flag.wait(), 1)
    flag.clear()
    waiter = asyncio.ensure_future(flag.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    flag.set()
    await asyncio.wait_for(waiter, 5)
    assert flag.waiters is None
