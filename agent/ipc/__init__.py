"""The agent's endpoints: the control socket (``control``), its connections
and their kernel-given identity (``session``), the app registry
(``registry``) and the D-Bus client (``dbus``).  Imports ``core`` and ``aio``.
"""
