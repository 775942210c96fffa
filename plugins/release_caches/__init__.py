"""The built-in plugin ``release_caches``: ask registered apps to free their
caches, fairly, and measure what they freed.  ``plugin``: the hooks
(:class:`~.plugin.ReleaseCaches`); ``scheduler``: the fair trim scheduler
(pure logic, MicroPython-clean).  See docs/fairness.md.  Nothing is
imported here, so that the scheduler imports alone.
"""
