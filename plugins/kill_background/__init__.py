"""The built-in plugin ``kill_background``: when trims are not enough, kill
the least valuable background process, one at a time, safely.
``plugin``: the hooks and the kill sequence (:class:`~.plugin.KillBackground`);
``settings``: its config section; ``victims``: who may be killed and who
first; ``pidkill``: the kill by pidfd.  See docs/kill.md.  Nothing is
imported here, so that the pure parts import alone.
"""
