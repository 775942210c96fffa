"""I/O that measures: the memory domains (``domains``: the system, a v1 or v2
memcg), the pressure sources (``sources``), user presence (``presence``)
and a process's footprint (``footprint``).  Imports ``core`` and ``aio``.
"""
