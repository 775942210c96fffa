################################################################################
#
# python-memagent
#
################################################################################

# The package is the memagent repository this external tree lives in:
# pyproject.toml maps agent/ to memagent and plugins/ to memagent.plugins.
# A local site has no tarball to hash and its version is "custom".
#
# One package, two infrastructures (the choice in Config.in): for python3,
# the python-package infrastructure builds and installs a wheel (the end of
# this file); for micropython, which has no packaging and no python3 on the
# target, the generic one copies the sources, compiled to .mpy bytecode by
# default (the MicroPython part below).
PYTHON_MEMAGENT_SITE = $(BR2_EXTERNAL_MEMAGENT_PATH)/..
PYTHON_MEMAGENT_SITE_METHOD = local
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

# The board's kernel settings (board/<profile>/sysctl.conf, if it has one),
# applied at boot by busybox's or procps-ng's S02sysctl.
define PYTHON_MEMAGENT_INSTALL_CONFIG
	$(INSTALL) -D -m 0644 $(PYTHON_MEMAGENT_CONF) \
		$(TARGET_DIR)/etc/memagent/memagent.conf
	$(INSTALL) -D -m 0644 $(PYTHON_MEMAGENT_OVERLAY)/etc/default/memagent \
		$(TARGET_DIR)/etc/default/memagent
	if [ -f $(dir $(PYTHON_MEMAGENT_CONF))sysctl.conf ]; then \
		$(INSTALL) -D -m 0644 $(dir $(PYTHON_MEMAGENT_CONF))sysctl.conf \
			$(TARGET_DIR)/etc/sysctl.d/60-memagent.conf; \
	fi
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

ifeq ($(BR2_PACKAGE_PYTHON_MEMAGENT_MICROPYTHON),y)

# The directory micropython searches for memagent: board/common/micropython/
# memagent, installed as /usr/bin/memagent, sets MICROPYPATH to
# ".frozen:/usr/lib/memagent/micropython". Not /usr/lib/micropython: there
# micropython-lib installs os, json, select, socket, time, struct, re, ...
# and a module on the path replaces MicroPython's built-in module of that
# name (its "extensible" modules), so the agent would run on micropython-lib's
# FFI and pure-Python versions (json alone takes 64 KiB more of the heap).
PYTHON_MEMAGENT_MPY_LIB = /usr/lib/memagent/micropython

# micropython runs the agent, and its build directory has the mpy-cross
# that compiles the bytecode below.
PYTHON_MEMAGENT_DEPENDENCIES += micropython

# The installed layout: agent/ as memagent/, plugins/ as memagent/plugins/,
# the .py files only (what the wheel has, less py.typed), and not
# memagent.demo (see PYTHON_MEMAGENT_REMOVE_DEMO below). rsync takes the
# first rule that matches, so the exclusions come before the includes.
PYTHON_MEMAGENT_MPY_RSYNC = rsync -r --chmod=D0755,F0644 --prune-empty-dirs
PYTHON_MEMAGENT_MPY_ONLY_PY = --exclude=__pycache__/ \
	--include='*/' --include='*.py' --exclude='*'

ifeq ($(BR2_PACKAGE_PYTHON_MEMAGENT_MPY_BYTECODE),y)
# micropython.mk builds mpy-cross for the build machine in its build
# directory (MICROPYTHON_BUILD_CMDS makes its mpy-cross directory, whose
# Makefile has BUILD ?= build and PROG = mpy-cross). Being the target
# micropython's own version, it writes bytecode that interpreter loads:
# micropython refuses a .mpy of another .mpy version (MPY_VERSION).
PYTHON_MEMAGENT_MPY_CROSS = $(MICROPYTHON_DIR)/mpy-cross/build/mpy-cross

# Each installed .py becomes a .mpy, and the .py goes: micropython
# imports x.py rather than x.mpy when both are there. -s names the source
# in tracebacks as memagent/... (the path in the tree).
define PYTHON_MEMAGENT_MPY_COMPILE
	(cd $(TARGET_DIR)$(PYTHON_MEMAGENT_MPY_LIB) && \
	for src in $$(find memagent -name '*.py' | LC_ALL=C sort); do \
		$(PYTHON_MEMAGENT_MPY_CROSS) -s $$src -o $${src%.py}.mpy $$src \
			|| exit 1; \
		chmod 0644 $${src%.py}.mpy && rm $$src || exit 1; \
	done)
endef
endif

# rm -rf first: a module removed from the sources must go from the target.
# The sources are copied, then compiled in place with the bytecode option.
define PYTHON_MEMAGENT_INSTALL_TARGET_CMDS
	rm -rf $(TARGET_DIR)$(PYTHON_MEMAGENT_MPY_LIB)
	mkdir -p $(TARGET_DIR)$(PYTHON_MEMAGENT_MPY_LIB)
	$(PYTHON_MEMAGENT_MPY_RSYNC) --exclude=/demo/ $(PYTHON_MEMAGENT_MPY_ONLY_PY) \
		$(@D)/agent/ $(TARGET_DIR)$(PYTHON_MEMAGENT_MPY_LIB)/memagent
	$(PYTHON_MEMAGENT_MPY_RSYNC) $(PYTHON_MEMAGENT_MPY_ONLY_PY) \
		$(@D)/plugins/ $(TARGET_DIR)$(PYTHON_MEMAGENT_MPY_LIB)/memagent/plugins
	$(PYTHON_MEMAGENT_MPY_COMPILE)
	$(INSTALL) -D -m 0755 $(@D)/board/common/micropython/memagent \
		$(TARGET_DIR)/usr/bin/memagent
endef

$(eval $(generic-package))

else # python3

# pyproject.toml only (no setup.py): Buildroot's setuptools type builds
# it through PEP 517 ("python -m build -n -w" with host-python-setuptools).
PYTHON_MEMAGENT_SETUP_TYPE = setuptools

# memagent.demo (the demo and the scenario tools) is for workstations and
# tests: a device never runs it, and `memagent demo` there says so.
define PYTHON_MEMAGENT_REMOVE_DEMO
	rm -rf $(TARGET_DIR)/usr/lib/python$(PYTHON3_VERSION_MAJOR)/site-packages/memagent/demo
endef
PYTHON_MEMAGENT_POST_INSTALL_TARGET_HOOKS += PYTHON_MEMAGENT_REMOVE_DEMO

$(eval $(python-package))

endif
