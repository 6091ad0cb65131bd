"""The driver-worker framing (``wire.Wire``): whole messages, the framing of
``multiprocessing.connection``, and a clear end."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from shoal.backends.local.wire import Wire

SIZES = [0, 1, 16383, 16384, 5 * (1 << 20)]  # empty, tiny, around one write, many reads


@pytest.fixture
def pair() -> Iterator[tuple[Wire, Wire]]:
    a, b = socket.socketpair()
    ends = Wire(a.detach()), Wire(b.detach())
    yield ends
    for end in ends:
        end.close()


def _send_later(end: Wire | Connection, messages: list[bytes]) -> threading.Thread:
    """Send from a thread: a message larger than the socket buffer blocks until it is read."""
    t = threading.Thread(target=lambda: [end.send_bytes(m) for m in messages])
    t.start()
    return t


def test_messages_arrive_whole_and_in_order(pair: tuple[Wire, Wire]) -> None:
    a, b = pair
    messages = [bytes([i % 251]) * n for i, n in enumerate(SIZES)]
    t = _send_later(a, messages)
    assert [b.recv_bytes() for _ in messages] == messages
    t.join()


@pytest.mark.parametrize("direction", ["to-connection", "from-connection"])
def test_it_speaks_the_framing_of_multiprocessing_connection(direction: str) -> None:
    x, y = socket.socketpair()
    ours, theirs = Wire(x.detach()), Connection(y.detach())
    messages = [b"m" * n for n in SIZES]
    try:
        sender, receiver = (ours, theirs) if direction == "to-connection" else (theirs, ours)
        t = _send_later(sender, messages)
        assert [receiver.recv_bytes() for _ in messages] == messages
        t.join()
    finally:
        ours.close()
        theirs.close()


def test_poll_says_whether_a_message_waits(pair: tuple[Wire, Wire]) -> None:
    a, b = pair
    assert not b.poll()
    a.send_bytes(b"x")
    assert b.poll(1.0)
    assert b.recv_bytes() == b"x"
    assert not b.poll()


def test_the_other_end_closing_is_eof(pair: tuple[Wire, Wire]) -> None:
    a, b = pair
    a.send_bytes(b"last")
    a.close()
    assert b.recv_bytes() == b"last"
    assert b.poll(), "a closed end must wake a poll"
    with pytest.raises(EOFError):
        b.recv_bytes()


def test_a_message_cut_short_is_eof() -> None:
    x, y = socket.socketpair()
    end = Wire(y.detach())
    try:
        x.sendall((100).to_bytes(4, "big") + b"only ten b")
        x.close()
        with pytest.raises(EOFError):
            end.recv_bytes()
    finally:
        end.close()


def test_writing_to_a_closed_end_raises_oserror(pair: tuple[Wire, Wire]) -> None:
    a, b = pair
    b.close()
    with pytest.raises(OSError):
        a.send_bytes(b"x" * 100_000)
