"""Whole messages over a stream socket between the driver and a worker.

The framing is ``multiprocessing.connection``'s (a 4-byte big-endian length, or -1 and an
8-byte length for messages over 2 GiB, then the bytes), written here because importing that
module (tempfile, threading, the multiprocessing package) took a third of a forked worker's
start. Blocking reads and writes: a reader waits for the whole message, as the driver's loop
and the worker expect.
"""

from __future__ import annotations

import os
import select

SMALL = 16384  # below this the header and the body go out in one write
BIG = 0x7FFFFFFF


class Wire:
    """One end of a connection, owning its file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # Asked after every task: a poll object made once costs about a microsecond, where
        # Connection.poll made a selector each call (ten).
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def fileno(self) -> int:
        return self.fd

    def send_bytes(self, data: bytes) -> None:
        n = len(data)
        head = n.to_bytes(4, "big") if n <= BIG else b"\xff\xff\xff\xff" + n.to_bytes(8, "big")
        if n < SMALL:
            self._write(head + data)
        else:
            self._write(head)
            self._write(data)

    def recv_bytes(self) -> bytes:
        """The next message; EOFError once the other end has closed."""
        n = int.from_bytes(self._read(4), "big", signed=True)
        if n == -1:
            n = int.from_bytes(self._read(8), "big")
        return self._read(n)

    def poll(self, timeout: float = 0.0) -> bool:
        """Whether a message (or the end) is waiting, after up to ``timeout`` seconds."""
        return bool(self._poll.poll(timeout * 1000))

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def _read(self, n: int) -> bytes:
        chunk = os.read(self.fd, n)
        if len(chunk) == n:
            return chunk
        if not chunk and n:
            raise EOFError
        buf = bytearray(n)
        buf[: len(chunk)] = chunk
        got = len(chunk)
        view = memoryview(buf)
        while got < n:
            k = os.readv(self.fd, [view[got:]])
            if k == 0:
                raise EOFError
            got += k
        return bytes(buf)
