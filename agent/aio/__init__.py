"""The shim: the only place of memagent that imports asyncio, and the one
that carries every difference between CPython and MicroPython.

:mod:`.unix` has the kernel's calls (``os``/``ctypes`` on CPython, libc
through ``ffi`` on MicroPython).  This module re-exports the subset of
asyncio that MicroPython's ``asyncio`` also has (create_task, sleep,
sleep_ms, wait_for, gather, Event, Lock and streams/servers), so that the
rest of the code runs on both without edits, and it adds helpers:
:func:`run` (bounded at the end), :func:`within_ms` (a wait that never
waits on a cancelled task), Unix stream servers and connections, signal
handlers, and :class:`FdWatch`, which waits until a file descriptor is
readable (POLLIN) or has urgent data (POLLPRI, as PSI trigger fds and
cgroup v2 kernfs files report).

On MicroPython, which lacks them, the shim provides the Unix streams and
the signal handlers itself (:mod:`._mpstream`: a signalfd read by a task),
and its own wait_for_ms (asyncio's loses a cancel, see :func:`wait_for_ms`),
and FdWatch parks the task in asyncio's IOQueue with the poll mask it
needs.  That IOQueue is a private part of MicroPython's asyncio: the
versions the shim was tested with are :data:`TESTED_MICROPYTHON`, and a
test fails on another one.  docs/micropython.md lists the subset.

On CPython the helper is built on ``loop.add_reader``.  For POLLPRI an epoll
object is registered for EPOLLPRI on the watched fd and the *epoll fd* is
given to ``add_reader``: an epoll fd becomes readable when one of its members
has an event, which bridges POLLPRI into any selector asyncio uses.
"""

import asyncio
import sys

try:
    from typing import Any, Awaitable, Callable, Coroutine, List, Optional, TypeVar

    T = TypeVar("T")
except ImportError:  # MicroPython has no typing module; annotations are not evaluated there
    pass

MICROPYTHON = sys.implementation.name == "micropython"
_mp: "Any" = None  # MicroPython: the shim's streams, signals and fd waits (_mpstream)
# The MicroPython versions whose asyncio internals (core._io_queue: its
# queue_read/queue_write and poller) the shim was tested with.
TESTED_MICROPYTHON = ((1, 25), (1, 28))

create_task = asyncio.create_task
sleep = asyncio.sleep
gather = asyncio.gather
wait_for = asyncio.wait_for
Event = asyncio.Event
Lock = asyncio.Lock
CancelledError = asyncio.CancelledError
TimeoutError = asyncio.TimeoutError
open_connection = asyncio.open_connection
start_server = asyncio.start_server
StreamReader = asyncio.StreamReader
StreamWriter = asyncio.StreamWriter

# MicroPython collects when its heap is full, so the whole heap (2 MB) is
# touched, and resident, before the first collection.  A collection every
# GC_THRESHOLD_BYTES of allocation keeps the touched part near what is live.
GC_THRESHOLD_BYTES = 32 * 1024

if MICROPYTHON:  # pragma: no cover - exercised under the micropython tox env
    import builtins
    import gc
    import time as _time

    gc.threshold(GC_THRESHOLD_BYTES)  # type: ignore[attr-defined]

    from . import _mpstream as _mp

    if not hasattr(builtins, "TimeoutError"):
        builtins.TimeoutError = asyncio.TimeoutError  # type: ignore[misc,assignment]
    sleep_ms = asyncio.sleep_ms  # type: ignore[attr-defined]

    def ticks_ms() -> int:
        """Return a monotonic millisecond clock (wraps on MicroPython's small ints)."""
        return _time.ticks_ms()  # type: ignore[attr-defined,no-any-return]

else:
    import time as _time

    async def sleep_ms(delay_ms: int) -> None:
        """Sleep for ``delay_ms`` milliseconds (MicroPython's asyncio.sleep_ms)."""
        await asyncio.sleep(delay_ms / 1000.0)

    def ticks_ms() -> int:
        """Return a monotonic clock in milliseconds."""
        return int(_time.monotonic() * 1000)


def untested_interpreter() -> "Optional[str]":
    """Return: a warning when this MicroPython is not one the shim's use of
    its asyncio internals was tested with (:data:`TESTED_MICROPYTHON`),
    else None (CPython: always None)."""
    if not MICROPYTHON:
        return None
    version = tuple(sys.implementation.version[:2])
    if version in TESTED_MICROPYTHON:
        return None
    return ("MicroPython %d.%d is untested: the shim parks tasks in its asyncio's IOQueue "
            "(a private part), tested with %s" % (version[0], version[1], ", ".join(
                "%d.%d" % v for v in TESTED_MICROPYTHON)))


LEFTOVER_GRACE_MS = 200  # run(): for the tasks still running when main returns
# The tasks that outlived run()'s end (they ignored their cancellation),
# kept referenced: garbage-collected, such a coroutine may loop for ever
# (a plugin's ``except BaseException`` around an await did, at exit).  A
# program that finds any here must end with os._exit (see leave()).
LEFTOVERS: "List[Any]" = []


def run(main: "Coroutine[Any, Any, T]") -> "T":
    """Run ``main`` in a new event loop and close it, as ``asyncio.run``,
    except that the tasks still running at the end are cancelled and given
    LEFTOVER_GRACE_MS to end, never more: ``asyncio.run`` waits for them
    without bound, and one that swallows its cancellation (a plugin's hook
    abandoned at its timeout) kept the agent alive after SIGTERM.

    Returns: ``main``'s result.  Raises: what ``main`` raised.
    """
    if MICROPYTHON:  # pragma: no cover - its run() ends with main
        return asyncio.run(main)
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        try:
            _end_leftovers(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _end_leftovers(loop: "Any") -> None:
    """Cancel the loop's remaining tasks and wait LEFTOVER_GRACE_MS for
    them; the ones still running then are left, and not reported again
    when they are garbage-collected."""
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.wait(tasks, timeout=LEFTOVER_GRACE_MS / 1000.0))
    for task in tasks:
        if not task.done():
            LEFTOVERS.append(task)
        elif not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler({"message": "unhandled exception at exit",
                                         "exception": task.exception(), "task": task})


def leave(code: int) -> int:
    """End the program with ``code`` now if :data:`LEFTOVERS` holds tasks
    that ignored their cancellation (flushing the logs and the standard
    streams first, skipping the interpreter's teardown, which would collect
    them); else return ``code``."""
    if not LEFTOVERS:
        return code
    import logging

    from . import unix

    logging.getLogger("memagent").error("%d task(s) ignored their cancellation; "
                                        "exiting without the interpreter's teardown",
                                        len(LEFTOVERS))
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    unix.exit_now(code)
    return code


async def wait_for_ms(aw: "Awaitable[T]", timeout_ms: int) -> "T":
    """Await ``aw`` for at most ``timeout_ms``.

    Returns: the result of ``aw``.
    Raises: TimeoutError when the time runs out (``aw`` is cancelled);
    CancelledError when the caller is cancelled, always.  On CPython 3.11+
    this is ``asyncio.timeout``: there, ``wait_for`` returns the result
    when the caller's cancel() races with ``aw`` finishing, and a
    dispatcher cancelled at shutdown in that instant ran on (a real agent
    hung after SIGTERM with a plugin busy on app events).  On MicroPython
    it is the shim's (:func:`._mpstream.wait_for_ms`): asyncio's there lost
    a cancel landing just after the time ran out, and an agent stopped at
    SIGTERM in that instant never exited.
    """
    if _TIMEOUT is not None:
        async with _TIMEOUT(timeout_ms / 1000.0):
            return await aw
    if MICROPYTHON:  # pragma: no cover
        return await _mp.wait_for_ms(aw, timeout_ms)  # type: ignore[no-any-return]
    return await asyncio.wait_for(aw, timeout_ms / 1000.0)


_TIMEOUT = getattr(asyncio, "timeout", None)  # CPython 3.11+


class Abandoned(TimeoutError):
    """:func:`within_ms` ran out of time: the task was cancelled and left
    to end on its own; ``task`` is it (keep a reference while it lives)."""

    def __init__(self, task: "Any", timeout_ms: int) -> None:
        super().__init__("abandoned after %d ms" % timeout_ms)
        self.task = task


async def within_ms(aw: "Awaitable[T]", timeout_ms: int) -> "T":
    """Run ``aw`` as its own task and wait for it at most ``timeout_ms``,
    never longer, whatever it does with its cancellation.

    Returns: its result.  Raises: what it raised (a CancelledError of its
    own as RuntimeError: only the caller's cancellation is CancelledError);
    :class:`Abandoned` when the time runs out (the task is
    cancelled, not waited for: one that swallows its cancellation runs
    on, and ``task.done()`` tells); CancelledError when the caller is
    cancelled (the task is cancelled too).  ``wait_for`` and
    ``asyncio.timeout`` wait for the cancelled awaitable to finish: a
    plugin hook that caught CancelledError in a loop held the dispatcher,
    and the agent after SIGTERM, for good.
    """
    box: "List[Any]" = []
    done = Event()

    async def runner() -> None:
        try:
            box.append((True, await aw))
        except (Exception, CancelledError) as e:  # noqa: B036 - handed to the caller
            box.append((False, e))
        finally:
            done.set()

    task = create_task(runner())
    try:
        await wait_for_ms(done.wait(), timeout_ms)
    except TimeoutError:
        task.cancel()
        raise Abandoned(task, timeout_ms) from None
    except CancelledError:
        task.cancel()
        raise
    ok, value = box[0]
    if ok:
        return value  # type: ignore[no-any-return]
    if isinstance(value, CancelledError):
        raise RuntimeError("it raised CancelledError")
    raise value


async def start_unix_server(
    handler: "Callable[[StreamReader, StreamWriter], Awaitable[None]]",
    path: str,
    limit: int = 65536,
) -> "Any":
    """Start a Unix stream server on ``path`` calling ``handler`` per client.

    ``limit`` bounds the reader's buffer (a longer line raises ValueError in
    ``readline``).  Returns: the server object (``close()`` then
    ``await wait_closed()``).  Raises: OSError if the path cannot be bound.
    On MicroPython, whose asyncio has no Unix servers, the shim's
    (:mod:`._mpstream`).
    """
    if MICROPYTHON:  # pragma: no cover
        return await _mp.start_unix_server(handler, path, limit)
    return await asyncio.start_unix_server(handler, path, limit=limit)


async def start_tcp_server(handler: "Callable[..., Any]", host: str, port: int,
                           limit: int = 65536) -> "Any":
    """:func:`start_unix_server` on TCP ``host`` (an address): ``port``.  Raises: OSError."""
    if MICROPYTHON:  # pragma: no cover
        return await _mp.start_tcp_server(handler, host, port, limit)
    return await asyncio.start_server(handler, host, port, limit=limit, reuse_address=True)


async def open_unix_connection(path: str, limit: int = 65536) -> "Any":
    """Connect to the Unix stream socket at ``path``.

    Returns: ``(reader, writer)``.  Raises: OSError if nobody listens there.
    """
    if MICROPYTHON:  # pragma: no cover
        return await _mp.open_unix_connection(path, limit)
    return await asyncio.open_unix_connection(path, limit=limit)


async def cancel_and_wait(task: "Optional[Any]") -> None:
    """Cancel ``task`` (None or done: nothing to do) and wait until it has
    ended; its CancelledError or any other exception is swallowed.  The
    plugins' on_stop uses it for the tasks they own."""
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def add_signal_handler(signum: int, callback: "Callable[[], None]") -> bool:
    """Call ``callback`` in the running loop when ``signum`` arrives.

    On MicroPython the signal is blocked and read from a signalfd by a
    task.  Returns: True if installed.  Raises: OSError (no signalfd).
    """
    if MICROPYTHON:  # pragma: no cover
        return bool(_mp.add_signal_handler(signum, callback))
    asyncio.get_running_loop().add_signal_handler(signum, callback)
    return True


def iscoroutinefunction(fn: "Any") -> "Optional[bool]":
    """Return: True if calling ``fn`` returns a coroutine (``async def``,
    or an object with an async ``__call__``), False if not, None where the
    interpreter cannot tell (MicroPython: an async def is a generator
    function there, like any other)."""
    if MICROPYTHON:  # pragma: no cover
        return None
    import inspect

    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


class FdWatch:
    """Wait, without polling, until ``fd`` is readable or has urgent data.

    ``urgent=True`` waits for POLLPRI (PSI triggers, eventfds report POLLIN).
    Create it inside a running loop; ``close()`` releases the epoll object but
    never closes ``fd`` itself.
    """

    def __init__(self, fd: int, urgent: bool = False) -> None:
        self.fd = fd
        self.urgent = urgent
        self._epoll: "Optional[Any]" = None
        self._poll_fd = fd
        if MICROPYTHON:  # pragma: no cover - IOQueue waits with its own mask
            return
        if urgent:
            import select

            self._epoll = select.epoll(1)
            self._epoll.register(fd, select.EPOLLPRI | select.EPOLLERR)
            self._poll_fd = self._epoll.fileno()

    def _drain_epoll(self) -> None:
        # Level-triggered epoll keeps reporting PRI until the caller re-arms
        # the source (PSI: the next trigger period); consume this edge only.
        if self._epoll is not None:
            self._epoll.poll(0)

    async def wait(self, timeout_ms: "Optional[int]" = None) -> bool:
        """Wait for the fd.

        Returns: True when it became ready, False when ``timeout_ms`` passed.
        Raises: OSError if the fd is closed under us.
        """
        if MICROPYTHON:  # pragma: no cover
            return await self._wait_micropython(timeout_ms)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def settle(ready: bool) -> None:
            if not fut.done():
                fut.set_result(ready)

        # A timer, not asyncio.wait_for: on CPython 3.11, wait_for returns
        # the result when a cancel() races with the fd becoming ready, and
        # a sensing task cancelled by a source switch then read its closed
        # source (seen in the ARM guest when /dev/mem_notify went away).
        loop.add_reader(self._poll_fd, settle, True)
        timer = None if timeout_ms is None else loop.call_later(timeout_ms / 1000.0,
                                                                settle, False)
        try:
            ready = bool(await fut)
        finally:
            loop.remove_reader(self._poll_fd)
            if timer is not None:
                timer.cancel()
        if ready:
            self._drain_epoll()
        return ready

    async def _wait_micropython(self, timeout_ms: "Optional[int]") -> bool:  # pragma: no cover
        if timeout_ms is None:
            await _mp.wait_fd(self.fd, self.urgent)
            return True
        try:
            await wait_for_ms(_mp.wait_fd(self.fd, self.urgent), timeout_ms)
        except asyncio.TimeoutError:
            return False
        return True

    def close(self) -> None:
        """Release the epoll object (the watched fd stays open)."""
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
