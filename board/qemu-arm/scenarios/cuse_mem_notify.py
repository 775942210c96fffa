"""TEST FIXTURE, not the product: a minimal CUSE server that makes a real
character device /dev/mem_notify in the qemu guest, with the poll semantics
of the 2008 patch's device, so that the agent's mem_notify source and the
device_watch plugin are tested against a real device, its real kernel
uevents ("add" on start, "remove" on exit, subsystem "cuse") and a real
failing fd when it goes away.  The real CUSE provider (pressure from PSI
behind /dev/mem_notify) is a later item.

    python3 cuse_mem_notify.py [DEVNAME]          (root; needs /dev/cuse)

Prints ``READY <major>:<minor>`` once the device exists, and
``STATS opens=.. polls=.. pollin=.. reads=.. wakeups=..`` when pressure is
cleared and when it exits (a reader drains the device once per wake).
SIGUSR1 signals pressure (POLLIN from then on, and a FUSE_NOTIFY_POLL wakeup
for every waiting poller); SIGUSR2 clears it; SIGTERM exits (the kernel
removes the device).  Like the real device, read() carries no data: EINVAL,
or EAGAIN with O_NONBLOCK.

The structs and opcodes are from the kernel's include/uapi/linux/fuse.h
(protocol 7.x), written out here as struct formats.  Single-threaded: the
kernel's requests are answered at once, in order.
"""

import errno
import os
import select
import signal
import struct
import sys

# struct fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding
IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")  # struct fuse_out_header: len, error, unique
CUSE_INIT_IN = struct.Struct("<IIII")  # major, minor, unused, flags
# struct cuse_init_out: major, minor, unused, flags, max_read, max_write,
# dev_major, dev_minor, spare[10]
CUSE_INIT_OUT = struct.Struct("<IIIIIIII40x")
OPEN_OUT = struct.Struct("<QII")  # fh, open_flags, padding
POLL_IN = struct.Struct("<QQII")  # fh, kh, flags, events
POLL_OUT = struct.Struct("<II")  # revents, padding
# struct fuse_read_in: fh, offset, size, read_flags, lock_owner, flags, padding
READ_IN = struct.Struct("<QQIIQII")
FH = struct.Struct("<Q")  # the first field of release_in; notify_poll_wakeup_out's kh

FUSE_KERNEL_VERSION = 7
FUSE_OPEN, FUSE_READ, FUSE_RELEASE, FUSE_FLUSH = 14, 15, 18, 25
FUSE_INTERRUPT, FUSE_POLL, CUSE_INIT = 36, 40, 4096
FUSE_NOTIFY_POLL = 1  # notification code, sent in the out header's error field
FUSE_POLL_SCHEDULE_NOTIFY = 1
FOPEN_DIRECT_IO, FOPEN_NONSEEKABLE = 1, 4
MAX_IO = 4096
# The kernel refuses reads of /dev/cuse shorter than max(8192, header +
# write_in + max_write).
READ_BUFFER = 64 * 1024


class Server:
    """One CUSE device: the kernel's requests in, replies out."""

    def __init__(self, devname):
        self.devname = devname
        self.fd = os.open("/dev/cuse", os.O_RDWR | os.O_CLOEXEC)
        self.pressure = False
        self.pollers = {}  # fh -> kh of a file that asked to be notified
        self.next_fh = 1
        self.stats = {"opens": 0, "polls": 0, "pollin": 0, "reads": 0, "wakeups": 0}

    def send(self, data):
        try:
            os.write(self.fd, data)
        except OSError as e:  # ENOENT: the request was interrupted meanwhile
            if e.errno != errno.ENOENT:
                raise

    def reply(self, unique, error=0, payload=b""):
        self.send(OUT_HEADER.pack(OUT_HEADER.size + len(payload), error, unique) + payload)

    def print_stats(self):
        print("STATS " + " ".join("%s=%d" % kv for kv in sorted(self.stats.items())),
              flush=True)

    def set_pressure(self, on):
        self.pressure = on
        if not on:
            self.print_stats()
            return
        for kh in list(self.pollers.values()):
            self.stats["wakeups"] += 1
            self.send(OUT_HEADER.pack(OUT_HEADER.size + FH.size, FUSE_NOTIFY_POLL, 0)
                      + FH.pack(kh))

    def init(self, unique, body):
        major, minor, _, _ = CUSE_INIT_IN.unpack_from(body)
        if major != FUSE_KERNEL_VERSION:
            raise SystemExit("cuse_mem_notify: kernel speaks FUSE %d.%d" % (major, minor))
        info = b"DEVNAME=%s\0" % self.devname.encode()
        self.reply(unique, 0, CUSE_INIT_OUT.pack(FUSE_KERNEL_VERSION, minor, 0, 0,
                                                 MAX_IO, MAX_IO, 0, 0) + info)

    def handle(self, data):
        """Answer one request (``data``: what one read of /dev/cuse returned)."""
        _, opcode, unique, _, _, _, _, _, _ = IN_HEADER.unpack_from(data)
        body = data[IN_HEADER.size:]
        if opcode == CUSE_INIT:
            self.init(unique, body)
            rdev = os.stat("/dev/" + self.devname).st_rdev
            print("READY %d:%d" % (os.major(rdev), os.minor(rdev)), flush=True)
        elif opcode == FUSE_OPEN:
            self.stats["opens"] += 1
            fh, self.next_fh = self.next_fh, self.next_fh + 1
            self.reply(unique, 0, OPEN_OUT.pack(fh, FOPEN_DIRECT_IO | FOPEN_NONSEEKABLE, 0))
        elif opcode == FUSE_POLL:
            fh, kh, flags, _events = POLL_IN.unpack_from(body)
            self.stats["polls"] += 1
            if flags & FUSE_POLL_SCHEDULE_NOTIFY:
                self.pollers[fh] = kh
            self.stats["pollin"] += self.pressure
            self.reply(unique, 0, POLL_OUT.pack(select.POLLIN if self.pressure else 0, 0))
        elif opcode == FUSE_READ:
            flags = READ_IN.unpack_from(body)[5]
            self.stats["reads"] += 1
            self.reply(unique, -(errno.EAGAIN if flags & os.O_NONBLOCK else errno.EINVAL))
        elif opcode == FUSE_RELEASE:
            self.pollers.pop(FH.unpack_from(body)[0], None)
            self.reply(unique)
        elif opcode == FUSE_FLUSH:
            self.reply(unique)
        elif opcode == FUSE_INTERRUPT:
            pass  # every request is answered at once: nothing left to interrupt
        else:
            self.reply(unique, -errno.ENOSYS)

    def serve(self):
        """Answer requests until SIGTERM or the kernel ends the connection."""
        while True:
            try:
                data = os.read(self.fd, READ_BUFFER)
            except OSError as e:
                if e.errno == errno.ENOENT:  # a request interrupted before we read it
                    continue
                if e.errno == errno.ENODEV:  # the connection was aborted
                    return
                raise
            if len(data) >= IN_HEADER.size:
                self.handle(data)


def main(argv):
    server = Server(argv[1] if len(argv) > 1 else "mem_notify")
    # Python runs these between bytecodes, in this thread: a read of
    # /dev/cuse interrupted by the signal is retried after the handler.
    signal.signal(signal.SIGUSR1, lambda *_: server.set_pressure(True))
    signal.signal(signal.SIGUSR2, lambda *_: server.set_pressure(False))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve()
    finally:
        os.close(server.fd)  # the kernel unregisters the device
        server.print_stats()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
