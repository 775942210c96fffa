# mypy: ignore-errors
"""The part of ``argparse`` the ``memagent`` command uses, for MicroPython
(whose unix port has no argparse); CPython uses its own.

``ArgumentParser(prog, description, epilog, add_help)``, ``add_argument``
(flags or one positional; ``dest``, ``help``, ``default``, ``type``,
``choices``, ``metavar``, actions ``store``, ``store_true``, ``count``,
``append``, ``version``), ``add_subparsers(dest)`` and ``add_parser``,
``set_defaults``, ``parse_known_args``, ``parse_args``, ``print_help`` and
``error`` (usage to stderr, SystemExit 2).  ``--opt=value`` and ``-v -v``
work; ``-vv`` does not.
"""

import sys

SUPPRESS = "==SUPPRESS=="


class Namespace:
    """The parsed arguments as attributes."""

    def __init__(self, **kwargs):
        for key, value in kwargs.items():
            setattr(self, key, value)


class _Arg:
    def __init__(self, flags, kw):
        self.flags = flags
        self.positional = not flags[0].startswith("-")
        longest = max(flags, key=len).lstrip("-")
        self.dest = kw.get("dest") or longest.replace("-", "_")
        self.action = kw.get("action", "store")
        self.default = kw.get("default", 0 if self.action == "count" else
                              (False if self.action == "store_true" else None))
        self.type = kw.get("type")
        self.choices = kw.get("choices")
        self.help = kw.get("help", "")
        self.version = kw.get("version")


class _Subparsers:
    def __init__(self, dest):
        self.dest = dest
        self.parsers = {}

    def add_parser(self, name, **kw):
        parser = ArgumentParser(prog=name, **kw)
        self.parsers[name] = parser
        return parser


class ArgumentParser:
    """See the module's docstring."""

    def __init__(self, prog=None, description=None, epilog=None, add_help=True, **_):
        self.prog = prog or "memagent"
        self.description = description or ""
        self.epilog = epilog or ""
        self.add_help = add_help
        self.args = []
        self.defaults = {}
        self.sub = None
        self.help = _.get("help", "")

    def add_argument(self, *flags, **kw):
        self.args.append(_Arg(flags, kw))

    def add_subparsers(self, dest=None, **_):
        self.sub = _Subparsers(dest)
        return self.sub

    def set_defaults(self, **kw):
        self.defaults.update(kw)

    def print_help(self, file=None):
        out = file or sys.stdout
        out.write("usage: %s [options]%s\n" % (self.prog, " COMMAND" if self.sub else ""))
        if self.description:
            out.write("\n%s\n" % self.description)
        for arg in self.args:
            out.write("  %-24s %s\n" % (", ".join(arg.flags), arg.help))
        if self.sub:
            for name, parser in self.sub.parsers.items():
                out.write("  %-24s %s\n" % (name, parser.help))
        if self.epilog:
            out.write("\n%s\n" % self.epilog)

    def error(self, message):
        sys.stderr.write("usage: %s ...\n%s: error: %s\n" % (self.prog, self.prog, message))
        raise SystemExit(2)

    def _find(self, token):
        for arg in self.args:
            if token in arg.flags:
                return arg
        return None

    def _value(self, arg, text):
        if arg.type is not None:
            try:
                text = arg.type(text)
            except (TypeError, ValueError):
                self.error("argument %s: invalid value: %r" % (arg.flags[0], text))
        if arg.choices is not None and text not in arg.choices:
            self.error("argument %s: invalid choice: %r (choose from %s)"
                       % (arg.flags[0], text, ", ".join(arg.choices)))
        return text

    def _start(self, ns):
        for arg in self.args:
            if not hasattr(ns, arg.dest):
                setattr(ns, arg.dest, arg.default)
        for key, value in self.defaults.items():
            setattr(ns, key, value)

    def parse_known_args(self, argv=None, namespace=None):
        """Returns: (namespace, the arguments it did not know)."""
        argv = list(sys.argv[1:] if argv is None else argv)
        ns = namespace or Namespace()
        self._start(ns)
        if self.sub is not None:
            setattr(ns, self.sub.dest, None)
        extra = []
        positionals = [a for a in self.args if a.positional]
        while argv:
            token = argv.pop(0)
            if self.add_help and token in ("-h", "--help"):
                self.print_help()
                raise SystemExit(0)
            if self.sub is not None and token in self.sub.parsers:
                setattr(ns, self.sub.dest, token)
                _, more = self.sub.parsers[token].parse_known_args(argv, ns)
                return ns, extra + more
            flag, eq, inline = token.partition("=")
            arg = self._find(flag) if token.startswith("-") else None
            if arg is None:
                if not token.startswith("-") and positionals:
                    pos = positionals.pop(0)
                    setattr(ns, pos.dest, self._value(pos, token))
                else:
                    extra.append(token)
                continue
            self._apply(arg, ns, argv, inline if eq else None)
        if positionals:
            self.error("the following arguments are required: %s" % positionals[0].dest)
        return ns, extra

    def _apply(self, arg, ns, argv, inline):
        if arg.action == "version":
            print(arg.version)
            raise SystemExit(0)
        if arg.action == "store_true":
            setattr(ns, arg.dest, True)
        elif arg.action == "count":
            setattr(ns, arg.dest, (getattr(ns, arg.dest, 0) or 0) + 1)
        else:
            if inline is None:
                if not argv:
                    self.error("argument %s: expected one argument" % arg.flags[0])
                inline = argv.pop(0)
            value = self._value(arg, inline)
            if arg.action == "append":
                value = list(getattr(ns, arg.dest, None) or []) + [value]
            setattr(ns, arg.dest, value)

    def parse_args(self, argv=None):
        ns, extra = self.parse_known_args(argv)
        if extra:
            self.error("unrecognized arguments: %s" % " ".join(extra))
        return ns
