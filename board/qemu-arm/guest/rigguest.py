"""Helpers for Python scenarios running inside the qemu-arm guest.

The scenario's directory (/rig) is on sys.path, so ``import rigguest`` works.
"""
import base64
import sys

_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+")


def handback(name, data=None, path=None):
    """Send bytes/str ``data`` (or the file at ``path``) to the host as OUT/name."""
    if not name or name.startswith(".") or not set(name) <= _NAME_OK:
        raise ValueError("bad handback name %r" % (name,))
    if path is not None:
        with open(path, "rb") as f:
            data = f.read()
    if isinstance(data, str):
        data = data.encode()
    enc = base64.encodebytes(data).decode()
    out = "=====BEGIN FILE %s=====\n%s%s=====END FILE %s=====\n" % (
        name, enc, "" if enc.endswith("\n") or not enc else "\n", name)
    sys.stdout.write(out)
    sys.stdout.flush()


def fact(key, value):
    """Print a ``FACT key=value`` line (the host's tests read them)."""
    print("FACT %s=%s" % (key, value), flush=True)


class Checks:
    """Collects failed checks; ``finish()`` prints the RESULT line."""

    def __init__(self):
        self.failures = []

    def __call__(self, ok, what):
        """Record ``what`` as failed unless ``ok``.  Returns: ``ok``."""
        if not ok:
            self.failures.append(what)
            print("CHECK FAILED: %s" % what, flush=True)
        return ok

    def finish(self, ok_msg):
        """Print RESULT ok ``ok_msg``, or fail with the failed checks."""
        result(not self.failures, "; ".join(self.failures) or ok_msg)


def result(ok, msg=""):
    """Print the RESULT line the host judges the run by."""
    line = "RESULT %s" % ("ok" if ok else "fail")
    if msg:
        line += " " + msg
    print(line, flush=True)
