#!/bin/sh
# vzpkg hook: make a freshly bootstrapped Debian tree behave as a container.
# Runs inside the temporary VE (post-install) and again after cache updates.
# Idempotent; only touches what a container has no use for.
set -eu

mask() {
    # `systemctl mask` without a running systemd: a /dev/null symlink in /etc
    ln -sfn /dev/null "/etc/systemd/system/$1"
}

if [ -d /lib/systemd/system ] || [ -d /usr/lib/systemd/system ]; then
    mkdir -p /etc/systemd/system
    # no consoles to log in on: the VE is entered with `vzctl enter`
    for n in 1 2 3 4 5 6; do mask "getty@tty$n.service"; done
    mask getty-static.service
    mask serial-getty@ttyS0.service
    # kernel interfaces the VE cannot (and must not) configure
    for unit in dev-hugepages.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
                sys-kernel-config.mount sys-fs-fuse-connections.mount \
                systemd-modules-load.service systemd-remount-fs.service \
                systemd-udevd.service systemd-udev-trigger.service \
                systemd-udev-settle.service proc-sys-fs-binfmt_misc.automount \
                systemd-binfmt.service systemd-journald-audit.socket; do
        mask "$unit"
    done
    # each VE makes its own ssh host keys on its first boot (the cache has none)
    cat > /etc/systemd/system/vzpkg-ssh-hostkeys.service <<'UNIT'
[Unit]
Description=SSH host keys of this VE (made on its first boot)
ConditionPathExists=/usr/bin/ssh-keygen
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
    mkdir -p /etc/systemd/system/multi-user.target.wants
    ln -sfn ../vzpkg-ssh-hostkeys.service \
        /etc/systemd/system/multi-user.target.wants/vzpkg-ssh-hostkeys.service
    # journald: keep logs in memory by default; a VE's disk is precious
    mkdir -p /etc/systemd/journald.conf.d
    cat > /etc/systemd/journald.conf.d/50-vzpkg.conf <<'CONF'
[Journal]
Storage=volatile
RuntimeMaxUse=16M
CONF
fi

# the host mounts the VE's filesystems; nothing to mount at boot
printf '# <file system> <mount point> <type> <options> <dump> <pass>\n' > /etc/fstab

# loopback only; the runtime writes the VE's addresses
if [ -d /etc/network ]; then
    if [ ! -s /etc/network/interfaces ] || ! grep -q '^iface lo' /etc/network/interfaces; then
        cat > /etc/network/interfaces <<'CONF'
# interfaces(5); vzctl adds the VE's own addresses
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback
CONF
    fi
fi

# no kernel in a container: do not let apt pull one in through recommends
mkdir -p /etc/apt/apt.conf.d
printf 'APT::Install-Recommends "false";\n' > /etc/apt/apt.conf.d/50vzpkg-norecommends
exit 0
