# mypy: ignore-errors
"""MicroPython: Unix stream servers and connections, signals, and a
wait_for_ms that never loses its caller's cancel (:func:`wait_for_ms`), on
its asyncio (which has TCP servers only, and no signal handling).

:class:`UnixStream` is one connection as both the reader and the writer the
agent uses of CPython's streams: ``read``, a ``readline`` bounded by
``limit`` (ValueError past it, as CPython's), ``write`` (sent at once, the
rest queued and flushed by one task, as a transport does), ``drain``,
``write_eof``, ``close``/``wait_closed``, ``is_closing``,
``get_extra_info("socket")``, and ``transport.abort()`` and
``transport.get_write_buffer_size()``.  Waits park the task in asyncio's
IOQueue (``core._io_queue``, a private part: the versions it was tested
with are pinned in :data:`memagent.aio.TESTED_MICROPYTHON`).
"""

import asyncio
import socket
import struct

from . import _libc

try:
    from typing import Any
except ImportError:  # MicroPython
    pass

core = getattr(asyncio, "core", None)  # MicroPython's; None on CPython (never used there)

EAGAIN, EMFILE, ENFILE = 11, 24, 23
# recv() allocates what it is asked for on MicroPython's fixed heap: ask
# for 4 KiB at most (a 64 KiB read per hostile connection fragmented a
# 2 MB heap into MemoryErrors, measured).
READ_CHUNK = 4096
# Bytes all connections together may hold unread (a line in progress):
# past it, the connection holding the most is told its line is too long.
# Each may hold up to its ``limit`` (64 KiB) on CPython; 72 of them at
# once would be 4.6 MB, over the whole heap here.
IN_BUDGET_BYTES = 256 * 1024
_held = [0]  # bytes held in every UnixStream's input buffer
ACCEPT_BACKOFF_MS = 100  # out of fds: the listening socket stays readable
ACCEPT_BATCH = 16  # connections accepted per wake, then the others run


def _wait_read(obj):
    yield core._io_queue.queue_read(obj)


def _wait_write(obj):
    yield core._io_queue.queue_write(obj)


def wait_fd(fd, urgent):
    """A generator to await: parks the task until ``fd`` is readable, or
    with ``urgent`` until it has POLLPRI (a PSI trigger's fd always polls
    readable, so a POLLIN wait on it would spin).  The IOQueue registers
    POLLIN and drops the registration after each wake: re-armed per call."""
    q = core._io_queue
    q.queue_read(fd)
    if urgent:
        q.poller.modify(fd, 2)  # POLLPRI (POLLERR/POLLHUP are always reported)
    yield


def address(path):
    """Return: the packed sockaddr_un MicroPython's bind/connect take."""
    return struct.pack("H", socket.AF_UNIX) + path.encode() + b"\0"


class UnixStream:
    """One connection: reader, writer and transport in one object."""

    def __init__(self, sock, limit):
        self.sock = sock
        self.limit = limit
        self.transport = self
        self._in = b""
        self._eof = False
        self._out = bytearray()
        self._flusher = None
        self._shut_write = False
        self._closing = False
        self._closed = False

    # -- reading ------------------------------------------------------------------
    async def _recv(self, size):
        while True:
            if self._closed:
                return b""
            try:
                return self.sock.recv(min(size, READ_CHUNK))
            except OSError as e:
                if e.args[0] != EAGAIN:
                    raise
            await _wait_read(self.sock)

    async def read(self, size=-1):
        """Return: up to ``size`` bytes (b"" at EOF)."""
        if size < 0:
            size = READ_CHUNK
        if self._in:
            data, self._in = self._in[:size], self._in[size:]
            _held[0] -= len(data)
            return data
        if self._eof:
            return b""
        data = await self._recv(size)
        if not data:
            self._eof = True
        return data

    async def readline(self):
        """Return: the next line with its b"\\n" (the rest at EOF).
        Raises: ValueError when ``limit`` bytes come without one."""
        while True:
            i = self._in.find(b"\n")
            if i >= 0:
                line, self._in = self._in[:i + 1], self._in[i + 1:]
                _held[0] -= len(line)
                return line
            if len(self._in) > self.limit or (
                    _held[0] > IN_BUDGET_BYTES and len(self._in) >= READ_CHUNK):
                self._drop_input()
                raise ValueError("line longer than %d bytes" % self.limit)
            if self._eof:
                line = self._in
                self._drop_input()
                return line
            data = await self._recv(READ_CHUNK)
            if not data:
                self._eof = True
            else:
                self._in += data
                _held[0] += len(data)

    def _drop_input(self):
        _held[0] -= len(self._in)
        self._in = b""

    # -- writing ------------------------------------------------------------------
    def _send_now(self):
        """Send what the socket takes now.  Returns: True if all went."""
        while self._out:
            try:
                n = self.sock.send(self._out)
            except OSError as e:
                if e.args[0] == EAGAIN:
                    return False
                self._out = bytearray()
                self.abort()
                return True
            self._out = self._out[n:]
        if self._shut_write and not self._closed:
            self._shut_write = False
            try:
                _libc.shutdown_write(self.sock)
            except OSError:
                pass
        return True

    async def _flush(self):
        try:
            while not self._closed and not self._send_now():
                await _wait_write(self.sock)
        finally:
            self._flusher = None

    def write(self, data):
        """Queue ``data``: sent now as far as the socket takes it, the rest
        by a task."""
        if self._closed or self._closing:
            return
        self._out += data
        if self._flusher is None and not self._send_now():
            self._flusher = asyncio.create_task(self._flush())

    async def drain(self):
        """Wait until everything written has gone to the kernel.
        Raises: OSError if the connection broke."""
        while self._flusher is not None:
            await _wait_write(self.sock)
            self._send_now()
        if self._closed and self._out:
            raise OSError(32, "connection lost")

    def can_write_eof(self):
        return True

    def write_eof(self):
        """Half-close once what is queued has gone."""
        self._shut_write = True
        if self._flusher is None:
            self._send_now()

    def get_write_buffer_size(self):
        return len(self._out)

    def get_extra_info(self, name, default=None):
        return self.sock if name == "socket" else default

    def is_closing(self):
        return self._closing or self._closed

    # -- closing ------------------------------------------------------------------
    def abort(self):
        """Close now, dropping what is queued; a waiting reader sees EOF."""
        if self._closed:
            return
        self._closed = True
        self._out = bytearray()
        self._drop_input()
        try:
            _libc.shutdown_write(self.sock)  # wakes a reader parked on the fd
        except OSError:
            pass
        self.sock.close()

    def close(self):
        """Close once the queue is flushed (see :meth:`wait_closed`)."""
        self._closing = True
        if self._flusher is None:
            self.abort()

    async def wait_closed(self):
        """Wait for the queued bytes to go, then close."""
        if self._flusher is not None:
            try:
                await self.drain()
            except OSError:
                pass
        self.abort()


class UnixServer:
    """A listening Unix stream socket calling ``handler(stream, stream)``
    per connection, each in its own task."""

    def __init__(self, sock, handler, limit):
        self.sock = sock
        self.handler = handler
        self.limit = limit
        self._task = asyncio.create_task(self._accept_loop())

    async def _accept_loop(self):
        while True:
            await _wait_read(self.sock)
            # Drain the backlog per wake (at most ACCEPT_BATCH): one accept
            # per wake left a flood's clients with EAGAIN from connect().
            for _ in range(ACCEPT_BATCH):
                try:
                    conn, _ = self.sock.accept()
                except OSError as e:
                    if e.args[0] in (EMFILE, ENFILE):
                        await asyncio.sleep_ms(ACCEPT_BACKOFF_MS)
                    break
                conn.setblocking(False)
                stream = UnixStream(conn, self.limit)
                asyncio.create_task(self.handler(stream, stream))

    def close(self):
        """Stop accepting and close the listening socket."""
        self._task.cancel()
        self.sock.close()

    async def wait_closed(self):
        await asyncio.gather(self._task, return_exceptions=True)


async def start_unix_server(handler, path, limit):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address(path))
        sock.listen(100)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return UnixServer(sock, handler, limit)


async def start_tcp_server(handler, host, port, limit):
    """A listening TCP socket on ``host`` (an address) and ``port``,
    served as a Unix one (:class:`UnixStream` takes any stream socket)."""
    family, _, _, _, addr = socket.getaddrinfo(host, port)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(16)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return UnixServer(sock, handler, limit)


async def open_unix_connection(path, limit):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address(path))
    except OSError as e:
        sock.close()
        raise _libc.error(e.args[0], path)
    sock.setblocking(False)
    stream = UnixStream(sock, limit)
    return stream, stream


# -- timeouts -----------------------------------------------------------------------


async def wait_for_ms(aw: "Any", timeout_ms: int) -> "Any":
    """``asyncio.wait_for_ms`` whose caller only ever waits on an Event.

    MicroPython's Task.cancel() of a task that awaits another task cancels
    the awaited one instead.  Its wait_for awaits its runner task once the
    time has run out, so a cancel landing then went to that runner (already
    cancelled) and was lost: the caller got TimeoutError and ran on, and a
    sensing task stopped at SIGTERM in that instant looped for ever (the
    agent never exited).  A task waiting on an Event is cancelled itself.

    Returns: what ``aw`` returned.  Raises: what ``aw`` raised;
    asyncio.TimeoutError when ``timeout_ms`` passes (``aw`` cancelled and
    waited for, as by wait_for); CancelledError when the caller is
    cancelled (``aw`` cancelled, not waited for).
    """
    wake = asyncio.Event()  # set when aw ends or the time runs out
    ended = asyncio.Event()
    box = []

    async def runner() -> None:
        try:
            box.append((True, await aw))
        except BaseException as e:  # noqa: B036 - handed to the caller
            box.append((False, e))
        ended.set()
        wake.set()

    async def clock() -> None:
        await asyncio.sleep_ms(timeout_ms)
        wake.set()

    task = asyncio.create_task(runner())
    timer = asyncio.create_task(clock())
    try:
        await wake.wait()
        if not box:  # the time ran out
            task.cancel()
            await ended.wait()
            raise asyncio.TimeoutError
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        timer.cancel()
    ok, value = box[0]
    if ok:
        return value
    raise value


# -- signals ------------------------------------------------------------------------

_SIGNAL_TASKS = []


async def _signal_loop(fd, callback):
    while True:
        await wait_fd(fd, False)
        while _libc.read_signal(fd) is not None:
            callback()


def add_signal_handler(signum, callback):
    """Block ``signum`` and call ``callback`` in the loop when it comes
    (a signalfd watched by a task).  Returns: True."""
    fd = _libc.signalfd([signum])
    _SIGNAL_TASKS.append(asyncio.create_task(_signal_loop(fd, callback)))
    return True
