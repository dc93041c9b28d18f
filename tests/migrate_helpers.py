"""A second host on this machine for migration tests and benchmarks: a network
namespace of its own joined to the host by a veth pair, its own sshd there (keys
made here), and its own VZ_ROOT.  vzctl runs there through ssh, in that network
namespace (and the same mount namespace, so it sees the same files)."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST_IP = "10.215.1.1"
PEER_IP = "10.215.1.2"


@dataclass
class SecondHost:
    netns: str
    vzroot: Path
    ssh_opts: list[str]
    vzctl: str                    # the vzctl command line there
    link: str = ""                # this host's end of the veth pair to it

    @property
    def dest(self) -> str:
        return f"root@{PEER_IP}"

    def vzctl_argv(self, *args: str) -> list[str]:
        """Run vzctl on the second host (through ssh, as vzmigrate does)."""
        line = f"VZ_ROOT={shlex.quote(str(self.vzroot))} {self.vzctl} " + shlex.join(args)
        return ["ssh", "-o", "BatchMode=yes", *self.ssh_opts, self.dest, line]

    @contextlib.contextmanager
    def slow_link(self, rate: str = "200mbit") -> Iterator[None]:
        """Bytes to the second host go at *rate* at most (a token bucket on this
        end): a VE's memory then takes seconds to travel, whatever the CPU."""
        subprocess.run(["tc", "qdisc", "replace", "dev", self.link, "root", "tbf", "rate",
                        rate, "burst", "256kb", "latency", "400ms"], check=True,
                       capture_output=True)
        try:
            yield
        finally:
            subprocess.run(["tc", "qdisc", "del", "dev", self.link, "root"],
                           capture_output=True, check=False)

    def route_to(self, ip: str) -> None:
        """The VE's address now lives behind the second host (what ARP would say)."""
        subprocess.run(["ip", "route", "replace", f"{ip}/32", "via", PEER_IP], check=True)


def vzctl_command() -> str:
    """This checkout's vzctl, as a shell command line (PYTHONPATH kept)."""
    py = shlex.quote(sys.executable)
    pp = os.environ.get("PYTHONPATH")
    env = f"env PYTHONPATH={shlex.quote(pp)} " if pp else ""
    return f"{env}{py} -P -m vzpkg.cli.vzctl"


@contextlib.contextmanager
def second_host(base: Path, name: str = "vzmig") -> Iterator[SecondHost]:
    netns = f"{name}{os.getpid() % 10000}"
    hif, pif = f"{netns}a"[:15], f"{netns}b"[:15]

    def run(*a: str) -> None:
        subprocess.run(list(a), check=True, capture_output=True)

    run("ip", "netns", "add", netns)
    sshd: subprocess.Popen[bytes] | None = None
    try:
        run("ip", "link", "add", hif, "type", "veth", "peer", "name", pif)
        run("ip", "link", "set", pif, "netns", netns)
        run("ip", "addr", "add", f"{HOST_IP}/30", "dev", hif)
        run("ip", "link", "set", hif, "up")
        inns = ["nsenter", f"--net=/run/netns/{netns}"]
        run(*inns, "ip", "addr", "add", f"{PEER_IP}/30", "dev", pif)
        run(*inns, "ip", "link", "set", pif, "up")
        run(*inns, "ip", "link", "set", "lo", "up")
        run(*inns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        keys = base / "ssh"
        keys.mkdir(mode=0o700)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "host"))
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "client"))
        (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
        (keys / "sshd_config").write_text(
            f"ListenAddress {PEER_IP}\nHostKey {keys / 'host'}\n"
            f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {keys / 'sshd.pid'}\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            "MaxStartups 50\nMaxSessions 50\n")
        (keys / "known_hosts").write_text(
            f"{PEER_IP} {(keys / 'host.pub').read_text().split(' ')[0]} "
            f"{(keys / 'host.pub').read_text().split(' ')[1]}\n")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sshd = subprocess.Popen([*inns, "/usr/sbin/sshd", "-D", "-e", "-f",
                                 str(keys / "sshd_config")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        opts = ["-i", str(keys / "client"), "-o", f"UserKnownHostsFile={keys / 'known_hosts'}",
                "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"]
        host = SecondHost(netns, base / "vz2", opts, vzctl_command(), hif)
        deadline = time.monotonic() + 15
        while subprocess.run(["ssh", "-o", "BatchMode=yes", *opts, host.dest, "true"],
                             capture_output=True, check=False).returncode != 0:
            assert time.monotonic() < deadline, "the second host's sshd did not come up"
            time.sleep(0.2)
        yield host
    finally:
        if sshd is not None:
            sshd.terminate()
            sshd.wait(10)
        subprocess.run(["ip", "link", "del", hif], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
