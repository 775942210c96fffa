"""memagent's built-in plugins (imported as ``memagent.plugins``).

``BUILTIN`` lists them as (name, "module:attr"); the loader
(:mod:`memagent.pluginload`) imports each only if the config enables it.
"""

BUILTIN = [
    ("release_caches", "memagent.plugins.release_caches:ReleaseCaches"),
    ("kill_background", "memagent.plugins.kill_background:KillBackground"),
    ("user_activity", "memagent.plugins.user_activity:UserActivity"),
    ("device_watch", "memagent.plugins.device_watch:DeviceWatch"),
    ("notify_ui", "memagent.plugins.notify_ui:NotifyUi"),
]
