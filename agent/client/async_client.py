"""The asyncio app client: :class:`AsyncClient`, on ``memagent.aio``.

The same protocol, reconnect backoff and message handling as the sync
:class:`memagent.client.Client` (both share :mod:`memagent.client.base`);
``on_trim`` may be a plain or an async function.  See docs/protocol.md.
"""

from .. import aio
from ..core.protocol import MAX_LINE_BYTES
from .base import CALL_TIMEOUT_MS, ClientError, Disconnected, _Core, _now_ms, log

try:
    from typing import Any, Dict, List, Optional, Tuple
except ImportError:  # MicroPython
    pass


class _Slot:
    """One awaited reply: ``event`` is set when ``reply`` came (None: lost)."""

    def __init__(self) -> None:
        self.event = aio.Event()
        self.reply: "Optional[Dict[str, Any]]" = None


class AsyncClient(_Core):
    """The asyncio client: same parameters as :class:`Client`; ``on_trim``
    may be a plain or an async function.  ``await run()`` serves until ``stop()``."""

    def __init__(self, *args: "Any", **kwargs: "Any") -> None:
        super().__init__(*args, **kwargs)
        self._writer: "Optional[Any]" = None
        self._outstanding: "List[Tuple[int, Optional[_Slot]]]" = []
        self._lost: "Optional[aio.Event]" = None
        self._wake: "Optional[aio.Event]" = None
        self._tasks: "List[Any]" = []

    @property
    def connected(self) -> bool:
        """True while connected and registered."""
        return self._writer is not None

    async def connect(self, timeout_ms: int = CALL_TIMEOUT_MS) -> None:
        """Connect and register (and subscribe, with ``on_level``), once.
        Raises: OSError (TimeoutError) if no agent answers; ClientError if refused."""
        await self._drop()
        self.connect_attempts += 1
        reader, writer = await aio.wait_for_ms(
            aio.open_unix_connection(self.socket_path, limit=MAX_LINE_BYTES), timeout_ms)
        self._writer, self._lost = writer, aio.Event()
        self._tasks = [aio.create_task(self._read_loop(reader, self._lost))]
        try:
            for cmd, fields in self._hello():
                await self._call(cmd, fields, timeout_ms)
        except BaseException:
            await self._drop()
            raise
        self._registered()

    async def set_class(self, cls: str, timeout_ms: int = CALL_TIMEOUT_MS) -> None:
        """Change class; kept for re-registering.  Raises: ClientError, OSError."""
        await self._call("set_class", {"class": cls}, timeout_ms)
        self.cls = cls

    async def set_estimate(self, estimate_kib: "Optional[int]",
                           timeout_ms: int = CALL_TIMEOUT_MS) -> None:
        """As :meth:`Client.set_estimate`.  Raises: ClientError, OSError."""
        await self._call("register", {"name": self.name, "class": self.cls,
                                      "estimate_kib": estimate_kib}, timeout_ms)
        self.estimate_kib = estimate_kib

    async def status(self, timeout_ms: int = CALL_TIMEOUT_MS) -> "Dict[str, Any]":
        """Return: the agent's status object.  Raises: ClientError, OSError."""
        return dict((await self._call("status", {}, timeout_ms)).get("status") or {})

    async def run(self) -> None:
        """Serve trims, reconnecting with backoff, until ``stop()``.
        Raises: OSError/ClientError past ``max_retries`` or on a permanent refusal."""
        self._stopping = False
        wake = self._wake = aio.Event()
        try:
            while not self._stopping:
                if self._lost is None:
                    try:
                        await self.connect()
                    except (OSError, aio.TimeoutError, ClientError) as err:
                        await self._sleep_ms(wake, self._count_failure(err))
                        continue
                if self._lost is not None:
                    await self._lost.wait()
                    if not self._stopping:
                        log.warning("lost the agent at %s", self.socket_path)
                    await self._drop()
        finally:
            await self._drop()

    def stop(self) -> None:
        """Make ``run()`` return soon."""
        self._stopping = True
        for event in (self._wake, self._lost):
            if event is not None:
                event.set()

    async def close(self) -> None:
        """Unregister (by closing) and release the connection."""
        await self._drop()

    # -- internals ----------------------------------------------------------------

    async def _sleep_ms(self, wake: "aio.Event", delay_ms: int) -> None:
        try:
            await aio.wait_for_ms(wake.wait(), delay_ms)
        except aio.TimeoutError:
            pass

    async def _drop(self) -> None:
        writer, self._writer, self._lost = self._writer, None, None
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        self._fail_outstanding()
        if writer is not None:
            try:
                writer.close()
                await writer.wait_closed()
            except OSError:
                pass

    def _fail_outstanding(self) -> None:
        for _, slot in self._outstanding:
            if slot is not None:
                slot.event.set()
        self._outstanding = []

    async def _read_loop(self, reader: "Any", lost: "aio.Event") -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                msg = self._parse(line)
                if msg is None:
                    continue
                if "ok" in msg:
                    self._on_reply(msg)
                elif msg["cmd"] == "trim":
                    self._tasks = [t for t in self._tasks if not t.done()]
                    self._tasks.append(aio.create_task(self._answer_trim(msg)))
                elif msg["cmd"] == "level":
                    self._on_level(msg)
        except (OSError, ValueError) as err:  # ValueError: a line over the limit
            log.warning("reading from the agent: %s", err)
        finally:
            self._fail_outstanding()
            lost.set()

    def _on_reply(self, msg: "Dict[str, Any]") -> None:
        if not self._outstanding:
            log.warning("ignoring a reply to nothing: %r", msg)
            return
        ident, slot = self._outstanding.pop(0)
        if msg["id"] is not None and msg["id"] != ident:
            log.warning("reply for id %r, expected %r", msg["id"], ident)
        if slot is not None:
            slot.reply = msg
            slot.event.set()
        elif not msg["ok"]:
            log.warning("the agent refused an answer: %s", msg.get("error"))

    async def _answer_trim(self, msg: "Dict[str, Any]") -> None:
        start_ms = _now_ms()
        result = self._call_trim(msg)
        if not isinstance(result, int):
            try:
                result = await result
            except Exception as err:
                log.exception("on_trim raised, answering 0: %s", err)
                result = 0
        late_ms = _now_ms() - start_ms - msg["deadline_ms"]
        if late_ms > 0:
            log.warning("on_trim took %d ms past the deadline", late_ms)
        try:
            await self._send("trimmed", {"trim_id": msg["trim_id"],
                                         "freed_kib": self._freed_kib(result)}, None)
        except (OSError, aio.TimeoutError) as err:
            log.warning("could not answer trim %d: %s", msg["trim_id"], err)

    async def _send(self, cmd: str, fields: "Dict[str, Any]",
                    slot: "Optional[_Slot]") -> None:
        """Send one request.  Raises: OSError (Disconnected), TimeoutError."""
        writer = self._writer
        if writer is None:
            raise Disconnected("not connected to the agent")
        ident, data = self._request(cmd, fields)
        self._outstanding.append((ident, slot))
        writer.write(data)
        await aio.wait_for_ms(writer.drain(), CALL_TIMEOUT_MS)

    async def _call(self, cmd: str, fields: "Dict[str, Any]",
                    timeout_ms: int) -> "Dict[str, Any]":
        """Return: the ok reply to ``cmd``.  Raises: ClientError if refused;
        OSError if lost; TimeoutError after ``timeout_ms``."""
        slot = _Slot()
        await self._send(cmd, fields, slot)
        await aio.wait_for_ms(slot.event.wait(), timeout_ms)
        if slot.reply is None:
            raise Disconnected("lost the agent waiting for %s" % cmd)
        return self._checked(cmd, slot.reply)
