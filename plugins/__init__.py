"""memagent's built-in plugins (imported as ``memagent.plugins``).

The plugin API and the first plugins arrive with the apps and plugins work;
the agent already calls its hook points through :mod:`memagent.dispatch`.
"""
