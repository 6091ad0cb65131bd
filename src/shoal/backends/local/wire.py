"""Whole messages over a stream socket between the driver and a worker.

The framing is ``multiprocessing.connection``'s (a 4-byte big-endian length, or -1 and an
8-byte length for messages over 2 GiB, then the bytes), written here because importing that
module (tempfile, threading, the multiprocessing package) took a third of a forked worker's
start. Blocking reads and writes: a reader waits for the whole message, as the driver's loop
and the worker expect.

Reads are buffered: one read takes whatever has arrived (up to READ bytes), which is often
several messages, and ``recv_bytes`` hands them out one by one. A worker sends a message per
finished Python task, so the driver would otherwise pay three system calls per message
(poll, header, body) instead of about one per wake-up.
"""

from __future__ import annotations

import os
import select

SMALL = 16384  # below this the header and the body go out in one write
BIG = 0x7FFFFFFF
READ = 65536  # bytes asked for by one read


class Wire:
    """One end of a connection, owning its file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # Asked after every task: a poll object made once costs about a microsecond, where
        # Connection.poll made a selector each call (ten).
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._buf = bytearray()  # bytes read and not yet handed out, from _pos on
        self._pos = 0

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
        return len(self._buf) > self._pos or bool(self._poll.poll(timeout * 1000))

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def _read(self, n: int) -> bytes:
        """The next ``n`` bytes, from the buffer and as many reads as it takes."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos >= n:
            data = bytes(buf[pos : pos + n])
            self._pos = pos + n
            if self._pos == len(buf):
                buf.clear()
                self._pos = 0
            return data
        if pos:
            del buf[:pos]
            self._pos = 0
        while len(buf) < n:
            chunk = os.read(self.fd, max(READ, n - len(buf)))
            if not chunk:
                raise EOFError
            buf += chunk
        data = bytes(buf[:n])
        del buf[:n]
        return data
