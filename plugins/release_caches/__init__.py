"""The built-in plugin ``release_caches``: ask registered apps to free their
caches, fairly, and measure what they freed.  ``plugin``: the hooks;
``scheduler``: the fair trim scheduler (pure logic).  See docs/fairness.md.
"""

from .plugin import ReleaseCaches

__all__ = ["ReleaseCaches"]
