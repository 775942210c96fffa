"""memagent's built-in plugins (imported as ``memagent.plugins``).

``BUILTIN`` lists them as (name, "module:attr"); the loader
(:mod:`memagent.runtime.pluginload`) imports each only if the config enables it.
"""

# Call order.  user_activity comes before kill_background so that its
# on_pressure rescan of input devices is done when kills are decided;
# kill_background's hook only starts its kill task, so notify_ui, after it,
# is not delayed by a dying victim.
BUILTIN = [
    ("release_caches", "memagent.plugins.release_caches.plugin:ReleaseCaches"),
    ("user_activity", "memagent.plugins.user_activity:UserActivity"),
    ("kill_background", "memagent.plugins.kill_background.plugin:KillBackground"),
    ("notify_ui", "memagent.plugins.notify_ui:NotifyUi"),
    ("device_watch", "memagent.plugins.device_watch:DeviceWatch"),
    ("mem_notify_device", "memagent.plugins.mem_notify_device:MemNotifyDevice"),
]
