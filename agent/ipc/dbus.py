"""A small D-Bus client connection on :mod:`memagent.aio`, for emitting signals.

The wire protocol comes from jeepney's sans-I/O parts only (the SASL
``Authenticator``, the message ``Parser``, the message constructors and the
bus's ``Hello``/``RequestName``); the socket is a ``memagent.aio`` Unix
stream, so only the shim imports asyncio.  Needs CPython (Unix stream
sockets) and jeepney (0.8 or later).  Plugins get it from their services
(``services.dbus()``).

A :class:`Connection` connects, authenticates (EXTERNAL) and says Hello in
one time bound (:func:`connect`); asks for well-known names and tracks which
it owns (``NameAcquired``/``NameLost`` update :attr:`Connection.owned`);
emits signals, each a bounded write; and drains every incoming message in a
background task, so the socket buffer never fills: replies go to the waiting
call, method calls get an answer (``Peer.Ping``, ``Introspect``, an empty
``Properties.GetAll``: a GDBusProxy asks for its properties when it is
created and would wait 25 s for a peer that never answers), anything else
is dropped.  A message over ``MAX_MESSAGE_BYTES`` is discarded in chunks.

A broken bus (closed, garbage, silent) ends the connection: :attr:`error`
says why and every later call raises :class:`DBusError`.  ``close()`` then
``await wait_closed()`` releases it.
"""

import os

from jeepney import (
    DBusAddress,
    HeaderFields,
    MessageFlag,
    MessageType,
    Parser,
    new_error,
    new_method_return,
    new_signal,
)
from jeepney.auth import BEGIN, Authenticator
from jeepney.bus import get_connectable_addresses
from jeepney.bus_messages import message_bus

from .. import aio

try:
    from typing import Any, Dict, List, Mapping, Optional, Set, Tuple
except ImportError:  # MicroPython
    pass

SYSTEM_BUS_DEFAULT = "unix:path=/run/dbus/system_bus_socket"
# Larger incoming messages are discarded unread: the agent only ever gets
# the bus's short signals and small method calls.
MAX_MESSAGE_BYTES = 64 * 1024
DISCARD_CHUNK = 4096
AUTH_LINE_MAX = 1024  # the bus's SASL lines are < 100 bytes (D-Bus spec examples)
REPLY_TIMEOUT_MS = 1000  # answering a method call: one bounded write
CLOSE_TIMEOUT_MS = 1000

# RequestName replies (D-Bus specification)
PRIMARY_OWNER, IN_QUEUE, EXISTS, ALREADY_OWNER = 1, 2, 3, 4

PEER = "org.freedesktop.DBus.Peer"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
PROPERTIES = "org.freedesktop.DBus.Properties"
UNKNOWN_METHOD = "org.freedesktop.DBus.Error.UnknownMethod"
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
STANDARD_XML = (
    '  <interface name="org.freedesktop.DBus.Peer"><method name="Ping"/></interface>\n'
    '  <interface name="org.freedesktop.DBus.Introspectable"><method name="Introspect">'
    '<arg name="xml" type="s" direction="out"/></method></interface>\n'
    '  <interface name="org.freedesktop.DBus.Properties"><method name="GetAll">'
    '<arg name="interface" type="s" direction="in"/>'
    '<arg name="props" type="a{sv}" direction="out"/></method></interface>\n')


class DBusError(Exception):
    """The bus cannot be used: unreachable, refused, broken or closed.
    The message says which and why."""


def bus_address(bus: str, environ: "Optional[Mapping[str, str]]" = None) -> str:
    """Resolve a ``[notify_ui] bus`` setting to a D-Bus address.

    ``"system"``: ``DBUS_SYSTEM_BUS_ADDRESS``, or
    ``unix:path=/run/dbus/system_bus_socket``; ``"session"``:
    ``DBUS_SESSION_BUS_ADDRESS``; anything else is taken as an address.
    Returns: the address.  Raises: DBusError if the session bus is asked
    for and its variable is not set.
    """
    env = os.environ if environ is None else environ
    if bus == "system":
        return env.get("DBUS_SYSTEM_BUS_ADDRESS", "") or SYSTEM_BUS_DEFAULT
    if bus == "session":
        address = env.get("DBUS_SESSION_BUS_ADDRESS", "")
        if not address:
            raise DBusError("DBUS_SESSION_BUS_ADDRESS is not set (no session bus here)")
        return address
    return bus


def socket_paths(address: str) -> "List[str]":
    """Return: the Unix socket paths an address names, in order (an abstract
    socket as ``"\\0name"``).  Raises: DBusError for a malformed address or
    one without a ``unix:path=`` / ``unix:abstract=`` entry."""
    try:
        return list(get_connectable_addresses(address))
    except (RuntimeError, ValueError) as e:
        raise DBusError("bad D-Bus address %r: %s" % (address, e))


async def connect(address: str, timeout_ms: int,
                  objects: "Optional[Dict[str, str]]" = None) -> "Connection":
    """Connect to the bus at ``address``, authenticate and say Hello, all
    within ``timeout_ms``.  ``objects`` maps object paths to the XML of
    their interfaces (answered to Introspect).

    Returns: the connection, its ``unique_name`` set.
    Raises: DBusError (with the reason) if the bus cannot be reached or
    misbehaves, or when the time runs out.
    """
    errors = []
    for path in socket_paths(address):
        try:
            return await aio.wait_for_ms(_open(path, timeout_ms, objects or {}), timeout_ms)
        except aio.TimeoutError:
            errors.append("%s: no answer within %d ms" % (_shown(path), timeout_ms))
        except DBusError as e:
            errors.append("%s: %s" % (_shown(path), e))
    raise DBusError("; ".join(errors))


def _shown(path: str) -> str:
    return "unix:abstract=" + path[1:] if path.startswith("\0") else "unix:path=" + path


async def _open(path: str, timeout_ms: int, objects: "Dict[str, str]") -> "Connection":
    try:
        reader, writer = await aio.open_unix_connection(path)
    except OSError as e:
        raise DBusError(str(e))
    conn = Connection(reader, writer, objects)
    try:
        await conn._authenticate()
        conn._start()
        reply = await conn.call(message_bus.Hello(), timeout_ms)
        conn.unique_name = str(reply.body[0])
    except BaseException:  # also the cancellation of the caller's timeout
        conn.close()
        await conn.wait_closed()
        raise
    return conn


class Connection:
    """One authenticated connection to a message bus (see the module docstring)."""

    def __init__(self, reader: "Any", writer: "Any", objects: "Dict[str, str]") -> None:
        self.reader = reader
        self.writer = writer
        self.objects = objects
        self.unique_name = ""
        self.owned: "Set[str]" = set()
        self.error: "Optional[str]" = None
        self.answered = 0  # method calls answered
        self.discarded = 0  # oversized messages dropped unread
        self._serial = 0
        self._pending: "Dict[int, List[Any]]" = {}  # serial -> [Event, reply]
        self._lock = aio.Lock()  # one writer at a time (Python 3.9: no concurrent drain)
        self._task: "Optional[Any]" = None
        self._parser = Parser()

    @property
    def closed(self) -> bool:
        """Return: True once the connection is unusable (see :attr:`error`)."""
        return self.error is not None

    # -- setup ------------------------------------------------------------------

    async def _authenticate(self) -> None:
        """SASL EXTERNAL, then BEGIN.  Raises: DBusError."""
        auth = Authenticator()
        try:
            for line in auth:
                if line:
                    self.writer.write(line)
                    await self.writer.drain()
                reply = await self.reader.readline()
                if not reply.endswith(b"\n"):
                    raise DBusError("the bus closed the connection during authentication")
                if len(reply) > AUTH_LINE_MAX:
                    raise DBusError("authentication failed: a %d-byte line" % len(reply))
                auth.feed(reply)
            self.writer.write(BEGIN)
        except DBusError:
            raise
        except (OSError, EOFError) as e:
            raise DBusError("the bus closed the connection during authentication (%s)" % e)
        except ValueError as e:  # AuthenticationError, or a line over the reader's limit
            raise DBusError("authentication failed: %s" % e)

    def _start(self) -> None:
        self._task = aio.create_task(self._read_loop())

    # -- reading ----------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await self._read_message()
                if msg is not None:
                    await self._handle(msg)
        except (EOFError, OSError) as e:
            self._fail("the bus closed the connection (%s)" % (e or type(e).__name__))
        except DBusError as e:
            self._fail(str(e))
        except aio.CancelledError:
            raise
        except Exception as e:  # garbage on the wire: any parse error ends the connection
            self._fail("protocol error: %s: %s" % (type(e).__name__, e))

    async def _read_message(self) -> "Any":
        """Return: the next message, or None if it was too large and
        discarded.  Raises: EOFError, OSError, or a parse error."""
        head = await self.reader.readexactly(16)
        self._parser.add_data(head)
        left = self._parser.bytes_desired()  # the header says the message's size
        if left + 16 > MAX_MESSAGE_BYTES:
            self._parser = Parser()
            while left > 0:
                left -= len(await self.reader.readexactly(min(left, DISCARD_CHUNK)))
            self.discarded += 1
            return None
        if left > 0:
            self._parser.add_data(await self.reader.readexactly(left))
        return self._parser.get_next_message()

    async def _handle(self, msg: "Any") -> None:
        kind = msg.header.message_type
        fields = msg.header.fields
        if kind in (MessageType.method_return, MessageType.error):
            slot = self._pending.get(fields.get(HeaderFields.reply_serial, 0))
            if slot is not None:
                slot[1] = msg
                slot[0].set()
        elif kind == MessageType.signal:
            if fields.get(HeaderFields.sender) == "org.freedesktop.DBus" and msg.body:
                member = fields.get(HeaderFields.member)
                if member == "NameAcquired":
                    self.owned.add(str(msg.body[0]))
                elif member == "NameLost":
                    self.owned.discard(str(msg.body[0]))
        elif kind == MessageType.method_call:
            reply = self._answer(msg)
            if reply is not None:
                self.answered += 1
                await self._send_bounded(reply, REPLY_TIMEOUT_MS, "a reply")

    def _answer(self, msg: "Any") -> "Any":
        """Return: the reply to a method call, or None (none wanted)."""
        if msg.header.flags & MessageFlag.no_reply_expected:
            return None
        fields = msg.header.fields
        iface = fields.get(HeaderFields.interface)
        member = fields.get(HeaderFields.member)
        path = fields.get(HeaderFields.path)
        if member == "Ping" and iface in (None, PEER):
            return new_method_return(msg)
        if path in self.objects:
            if member == "Introspect" and iface in (None, INTROSPECTABLE):
                return new_method_return(msg, "s", (self._introspect(path),))
            if member == "GetAll" and iface in (None, PROPERTIES):
                return new_method_return(msg, "a{sv}", ({},))
            if member in ("Get", "Set") and iface in (None, PROPERTIES):
                return new_error(msg, INVALID_ARGS, "s", ("no properties here",))
        return new_error(msg, UNKNOWN_METHOD, "s",
                         ("%s.%s is not served at %s" % (iface, member, path),))

    def _introspect(self, path: str) -> str:
        return ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"'
                ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
                "<node>\n" + STANDARD_XML + self.objects[path] + "</node>\n")

    # -- writing ----------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        """End the connection: remember why, wake every waiting call."""
        if self.error is None:
            self.error = reason
        self.writer.close()
        for slot in self._pending.values():
            slot[0].set()

    async def _send(self, msg: "Any") -> None:
        """Write one message (caller bounds the time).  Raises: DBusError."""
        async with self._lock:
            if self.error is not None:
                raise DBusError(self.error)
            self._serial += 1
            data = msg.serialise(self._serial)
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (OSError, RuntimeError) as e:
                self._fail("write failed: %s" % e)
                raise DBusError(self.error)

    async def _send_bounded(self, msg: "Any", timeout_ms: int, what: str) -> None:
        try:
            await aio.wait_for_ms(self._send(msg), timeout_ms)
        except aio.TimeoutError:
            # The bus does not read: half a message may be in the socket,
            # so the connection cannot be used any more.
            self._fail("%s: the bus did not take it within %d ms" % (what, timeout_ms))
            raise DBusError(self.error)

    async def call(self, msg: "Any", timeout_ms: int) -> "Any":
        """Send a method call and wait for its reply, within ``timeout_ms``.

        Returns: the reply message.  Raises: DBusError on an error reply
        (its name and text), no reply in time, or a broken connection.
        """
        member = msg.header.fields.get(HeaderFields.member, "?")
        slot: "List[Any]" = [aio.Event(), None, 0]  # [replied, reply, serial]
        try:
            await aio.wait_for_ms(self._call(msg, slot), timeout_ms)
        except aio.TimeoutError:
            raise DBusError("no reply to %s within %d ms" % (member, timeout_ms))
        finally:
            self._pending.pop(slot[2], None)
        reply = slot[1]
        if reply is None:
            raise DBusError(self.error or "no reply to %s" % member)
        if reply.header.message_type == MessageType.error:
            text = reply.body[0] if reply.body else ""
            raise DBusError("%s: %s" % (reply.header.fields.get(HeaderFields.error_name), text))
        return reply

    async def _call(self, msg: "Any", slot: "List[Any]") -> None:
        async with self._lock:  # the serial is registered before the reply can come
            if self.error is not None:
                raise DBusError(self.error)
            self._serial += 1
            slot[2] = self._serial
            self._pending[self._serial] = slot
            try:
                self.writer.write(msg.serialise(self._serial))
                await self.writer.drain()
            except (OSError, RuntimeError) as e:
                self._fail("write failed: %s" % e)
        await slot[0].wait()

    async def request_name(self, name: str, timeout_ms: int, flags: int = 0) -> int:
        """Ask the bus for ``name`` (``flags`` 0: queue behind an owner,
        never replace it, never be replaced).

        Returns: the bus's answer (PRIMARY_OWNER, IN_QUEUE, EXISTS or
        ALREADY_OWNER); an owned name is added to :attr:`owned`.
        Raises: DBusError if the bus refuses (e.g. AccessDenied by its policy).
        """
        reply = await self.call(message_bus.RequestName(name, flags), timeout_ms)
        code = int(reply.body[0])
        if code in (PRIMARY_OWNER, ALREADY_OWNER):
            self.owned.add(name)
        return code

    async def emit(self, path: str, interface: str, member: str, signature: str,
                   body: "Tuple[Any, ...]", timeout_ms: int) -> None:
        """Broadcast a signal from this connection (the bus stamps our
        unique name as its sender), as one write bounded by ``timeout_ms``.

        Raises: DBusError if the connection is broken or the bus does not
        take the message in time (the connection is then ended), ValueError
        or TypeError if ``body`` does not fit ``signature``.
        """
        msg = new_signal(DBusAddress(path, interface=interface), member, signature, body)
        await self._send_bounded(msg, timeout_ms, member)

    # -- closing ----------------------------------------------------------------

    def close(self) -> None:
        """Stop reading and close the socket (then ``await wait_closed()``)."""
        if self._task is not None:
            self._task.cancel()
        if self.error is None:
            self.error = "closed"
        self.writer.close()

    async def wait_closed(self) -> None:
        """Wait until the reader task has ended and the socket is closed
        (at most CLOSE_TIMEOUT_MS; errors of a dead socket are ignored)."""
        if self._task is not None:
            await aio.gather(self._task, return_exceptions=True)
        try:
            await aio.wait_for_ms(self.writer.wait_closed(), CLOSE_TIMEOUT_MS)
        except (OSError, aio.TimeoutError):
            pass

