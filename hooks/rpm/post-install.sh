#!/bin/sh
# vzpkg hook: make a freshly installed RPM-based tree (Fedora, AlmaLinux,
# Rocky Linux) behave as a container.  Runs inside the temporary VE.
# Idempotent; only touches what a container has no use for.
set -eu

mask() {
    ln -sfn /dev/null "/etc/systemd/system/$1"
}

if [ -d /usr/lib/systemd/system ]; then
    mkdir -p /etc/systemd/system
    for n in 1 2 3 4 5 6; do mask "getty@tty$n.service"; done
    mask serial-getty@ttyS0.service
    for unit in dev-hugepages.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
                sys-kernel-config.mount sys-fs-fuse-connections.mount \
                systemd-modules-load.service systemd-remount-fs.service \
                systemd-udevd.service systemd-udev-trigger.service \
                systemd-udev-settle.service proc-sys-fs-binfmt_misc.automount \
                systemd-binfmt.service auditd.service kdump.service; do
        mask "$unit"
    done
    mkdir -p /etc/systemd/journald.conf.d
    cat > /etc/systemd/journald.conf.d/50-vzpkg.conf <<'CONF'
[Journal]
Storage=volatile
RuntimeMaxUse=16M
CONF
fi

printf '# the host mounts the VE filesystems\n' > /etc/fstab

# no kernel or firmware in a container
if [ -f /etc/dnf/dnf.conf ] && ! grep -q '^install_weak_deps' /etc/dnf/dnf.conf; then
    printf 'install_weak_deps=False\n' >> /etc/dnf/dnf.conf
fi
exit 0
