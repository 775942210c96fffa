################################################################################
#
# python-memagent
#
################################################################################

# The package is the memagent repository this external tree lives in:
# pyproject.toml maps agent/ to memagent and plugins/ to memagent.plugins.
# A local site has no tarball to hash and its version is "custom".
PYTHON_MEMAGENT_SITE = $(BR2_EXTERNAL_MEMAGENT_PATH)/..
PYTHON_MEMAGENT_SITE_METHOD = local
# pyproject.toml only (no setup.py): Buildroot's setuptools type builds
# it through PEP 517 ("python -m build -n -w" with host-python-setuptools).
PYTHON_MEMAGENT_SETUP_TYPE = setuptools
# pyproject.toml: license = "GPL-2.0-or-later"; the repository has no
# LICENSE file yet, so there is no PYTHON_MEMAGENT_LICENSE_FILES.
PYTHON_MEMAGENT_LICENSE = GPL-2.0+

# Leave out what git ignores: the qemu rig's cache (.deb files and
# images), .tox, build/, *.egg-info (stale build products that
# setuptools would pick up). Measured on a working tree: 2.9 MB copied
# instead of 537 MB.
PYTHON_MEMAGENT_OVERRIDE_SRCDIR_RSYNC_EXCLUSIONS = --filter=':- .gitignore'

# Files shared with the qemu rig and any other board, from the repository.
PYTHON_MEMAGENT_OVERLAY = $(@D)/board/common/rootfs-overlay

PYTHON_MEMAGENT_PROFILE = $(call qstrip,$(BR2_PACKAGE_PYTHON_MEMAGENT_PROFILE))
ifeq ($(PYTHON_MEMAGENT_PROFILE),)
PYTHON_MEMAGENT_CONF = $(PYTHON_MEMAGENT_OVERLAY)/etc/memagent/memagent.conf
else
PYTHON_MEMAGENT_CONF = $(@D)/board/$(PYTHON_MEMAGENT_PROFILE)/memagent.conf
ifeq ($(BR_BUILDING)$(BR2_PACKAGE_PYTHON_MEMAGENT),yy)
ifeq ($(wildcard $(PYTHON_MEMAGENT_SITE)/board/$(PYTHON_MEMAGENT_PROFILE)/memagent.conf),)
$(error python-memagent: no board profile $(PYTHON_MEMAGENT_SITE)/board/$(PYTHON_MEMAGENT_PROFILE)/memagent.conf, check BR2_PACKAGE_PYTHON_MEMAGENT_PROFILE)
endif
endif
endif

# memagent.demo (the demo and the scenario tools) is for workstations and
# tests: a device never runs it, and `memagent demo` there says so.
define PYTHON_MEMAGENT_REMOVE_DEMO
	rm -rf $(TARGET_DIR)/usr/lib/python$(PYTHON3_VERSION_MAJOR)/site-packages/memagent/demo
endef
PYTHON_MEMAGENT_POST_INSTALL_TARGET_HOOKS += PYTHON_MEMAGENT_REMOVE_DEMO

define PYTHON_MEMAGENT_INSTALL_CONFIG
	$(INSTALL) -D -m 0644 $(PYTHON_MEMAGENT_CONF) \
		$(TARGET_DIR)/etc/memagent/memagent.conf
	$(INSTALL) -D -m 0644 $(PYTHON_MEMAGENT_OVERLAY)/etc/default/memagent \
		$(TARGET_DIR)/etc/default/memagent
endef
PYTHON_MEMAGENT_POST_INSTALL_TARGET_HOOKS += PYTHON_MEMAGENT_INSTALL_CONFIG

ifeq ($(BR2_PACKAGE_PYTHON_MEMAGENT_DBUS),y)
define PYTHON_MEMAGENT_INSTALL_DBUS_POLICY
	$(INSTALL) -D -m 0644 \
		$(PYTHON_MEMAGENT_OVERLAY)/etc/dbus-1/system.d/memagent.conf \
		$(TARGET_DIR)/etc/dbus-1/system.d/memagent.conf
endef
PYTHON_MEMAGENT_POST_INSTALL_TARGET_HOOKS += PYTHON_MEMAGENT_INSTALL_DBUS_POLICY
endif

define PYTHON_MEMAGENT_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(PYTHON_MEMAGENT_OVERLAY)/etc/init.d/S60memagent \
		$(TARGET_DIR)/etc/init.d/S60memagent
endef

define PYTHON_MEMAGENT_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/board/common/systemd/memagent.service \
		$(TARGET_DIR)/usr/lib/systemd/system/memagent.service
endef

$(eval $(python-package))
