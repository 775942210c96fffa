"""The running agent: the wiring (``agent``), the sensing loop (``sensing``),
the dispatcher (``dispatch``), the one hook spec (``hooks``), the plugin
loader (``pluginload``), what plugins may use (``services``), the event log
(``eventlog``), the status view (``status``) and self-protection
(``selfprotect``).  Imports ``core``, ``sense``, ``ipc`` and ``aio``.
"""
