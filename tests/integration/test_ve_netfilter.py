"""What a VE may send: only from its own addresses, and to the host only replies.

Real VEs on real veth pairs, real packets.  The attacker is a VE's root, which has
CAP_NET_ADMIN and CAP_NET_RAW in its network namespace: it puts another VE's
address on its eth0 with the VE's own ``ip``, then sends from it (Python run in
the VE's network namespace, since busybox nc cannot bind a source address).
All traffic stays on the test-net addresses of the VEs' veths.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime_helpers import destroy_all, runtime_for, sh
from vzpkg.core.errors import VeError
from vzpkg.runtime import net, netfilter
from vzpkg.runtime.ve import Runtime

pytestmark = [pytest.mark.root,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
              pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables")]

A, B, C = 9371, 9372, 9373
V4 = {A: "198.18.97.1", B: "198.18.97.2", C: "198.18.97.3"}
V6 = {A: "fd5a:97::1", B: "fd5a:97::2", C: "fd5a:97::3"}
HOST6 = "2001:db8:97::1"      # put on B's host end by the tests that need it
FAMILIES = {4: (socket.AF_INET, V4), 6: (socket.AF_INET6, V6)}


@pytest.fixture(scope="module")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    r = runtime_for(tmp_path_factory.mktemp("netfilter"))
    for ctid in (A, B, C):
        r.create(ctid, "busybox-1", hostname=f"nf{ctid}", ipadd=[V4[ctid], V6[ctid]])
        r.start(ctid)
    yield r
    destroy_all(r)


def in_netns(rt: Runtime, ctid: int, code: str, *args: str) -> subprocess.Popen[str]:
    """Python in the VE's network namespace (and nothing else of the VE)."""
    return subprocess.Popen(["nsenter", f"--net=/proc/{rt.init_pid(ctid)}/ns/net",
                             sys.executable, "-c", code, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


SEND = """
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
for _ in range(5):
    s.sendto(sys.argv[5].encode(), (sys.argv[3], int(sys.argv[4])))
    time.sleep(0.05)
print("sent")
"""

LISTEN = """
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
s.settimeout(0.2)
got, end = set(), time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    try:
        data, peer = s.recvfrom(100)
        got.add(data.decode())
        if len(sys.argv) > 4:
            s.sendto(sys.argv[4].encode(), peer)
    except TimeoutError:
        pass
print(" ".join(sorted(got)))
"""


def _ve_ip(rt: Runtime, ctid: int, verb: str, addr: str) -> None:
    """The VE's own busybox ip puts *addr* on (or takes it off) its eth0."""
    plen = 128 if ":" in addr else 32
    code, out = sh(rt, ctid, f"ip addr {verb} {addr}/{plen} dev eth0")
    assert code == 0, out
    deadline = time.monotonic() + 10
    while verb == "add" and ":" in addr:     # usable once duplicate detection is done
        out = sh(rt, ctid, "ip -6 addr show dev eth0")[1]
        line = next(ln for ln in out.splitlines() if f"{addr}/" in ln)
        if "tentative" not in line:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.1)


def _collect(sock: socket.socket, seconds: float) -> set[str]:
    got: set[str] = set()
    sock.settimeout(0.1)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        with contextlib.suppress(TimeoutError, ConnectionRefusedError):
            got.add(sock.recv(100).decode())
    return got


@pytest.mark.parametrize("ver", [4, 6])
def test_a_ve_cannot_answer_for_another_ve(rt: Runtime, ver: int) -> None:
    """The host holds a UDP exchange with B.  A takes B's address and sends "B's"
    reply: connection tracking would call it established and hand it to the host's
    socket.  Only B's own reply may arrive."""
    fam, addrs = FAMILIES[ver]
    local = net.GW4 if ver == 4 else HOST6
    hif_b = rt.paths.host_ifname(B)
    if ver == 6:
        subprocess.run(["ip", "addr", "add", f"{HOST6}/128", "dev", hif_b, "nodad"],
                       check=True)
    port_b = 7700 + ver
    listener = in_netns(rt, B, LISTEN, addrs[B], str(port_b), "3", "reply-from-B")
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.bind((local, 0))
            s.connect((addrs[B], port_b))
            s.send(b"hello")
            hport = s.getsockname()[1]
            _ve_ip(rt, A, "add", addrs[B])
            try:
                spoof = in_netns(rt, A, SEND, addrs[B], str(port_b), local, str(hport),
                                 "spoofed-by-A")
                assert spoof.communicate(timeout=20)[0].strip() == "sent"
            finally:
                _ve_ip(rt, A, "del", addrs[B])
            got = _collect(s, 2.0)
        assert "reply-from-B" in got, got     # the genuine reply still comes through
        assert "spoofed-by-A" not in got, got
    finally:
        listener.kill()
        listener.wait()
        if ver == 6:
            subprocess.run(["ip", "addr", "del", f"{HOST6}/128", "dev", hif_b], check=False)


def _forwarding(hif: str, ver: int, on: bool) -> Path:
    f = Path(f"/proc/sys/net/ipv4/conf/{hif}/forwarding" if ver == 4 else
             f"/proc/sys/net/ipv6/conf/{hif}/force_forwarding")
    if not f.exists():
        pytest.skip(f"{f} does not exist (per-interface IPv6 forwarding needs Linux 6.17)")
    f.write_text("1" if on else "0")
    return f


@pytest.mark.parametrize("ver", [4, 6])
def test_forwarded_packets_carry_only_the_senders_own_address(rt: Runtime,
                                                               ver: int) -> None:
    """With forwarding on (here only for packets arriving from A's veth, as a host
    that routes its VEs has it everywhere), A reaches C with its own address, and a
    packet from A with B's address never reaches C."""
    _, addrs = FAMILIES[ver]
    hif_a = rt.paths.host_ifname(A)
    fwd = _forwarding(hif_a, ver, True)
    port = 7710 + ver
    listener = in_netns(rt, C, LISTEN, addrs[C], str(port), "3")
    try:
        assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
        genuine = in_netns(rt, A, SEND, addrs[A], "0", addrs[C], str(port), "genuine")
        assert genuine.communicate(timeout=20)[0].strip() == "sent"
        _ve_ip(rt, A, "add", addrs[B])
        try:
            spoof = in_netns(rt, A, SEND, addrs[B], "0", addrs[C], str(port), "spoofed")
            assert spoof.communicate(timeout=20)[0].strip() == "sent"
        finally:
            _ve_ip(rt, A, "del", addrs[B])
        out, err = listener.communicate(timeout=20)
        got = set(out.split())
        assert "genuine" in got, (out, err)
        assert "spoofed" not in got, (out, err)
    finally:
        fwd.write_text("0")
        if listener.poll() is None:
            listener.kill()
            listener.wait()


def test_host_services_are_not_offered_to_ves(rt: Runtime) -> None:
    """TCP listeners on the VE's gateway addresses (169.254.0.1, fe80::1) cannot be
    reached from the VE; the host still connects into the VE and pings it."""
    hif_a = rt.paths.host_ifname(A)
    scope = socket.if_nametoindex(hif_a)
    servers = []
    try:
        for fam, addr in ((socket.AF_INET, (net.GW4, 0)),
                          (socket.AF_INET6, (net.GW6, 0, 0, scope))):
            srv = socket.socket(fam, socket.SOCK_STREAM)
            srv.bind(addr)
            srv.listen()
            servers.append(srv)
        p4, p6 = (s.getsockname()[1] for s in servers)
        t0 = time.monotonic()
        # (nc waits for the server after connecting: timeout ends it either way)
        sh(rt, A, f"echo hi | timeout 4 nc -w 2 {net.GW4} {p4}")
        assert time.monotonic() - t0 < 15
        probe = ("import socket,sys\n"
                 "try:\n"
                 "    socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)\n"
                 "    print('CONNECTED')\n"
                 "except OSError as e: print('refused', e)\n")
        out6 = in_netns(rt, A, probe, f"{net.GW6}%eth0", str(p6)).communicate(timeout=20)[0]
        assert "CONNECTED" not in out6, out6
        for srv in servers:          # no connection ever got through
            srv.setblocking(False)
            with pytest.raises(BlockingIOError):
                srv.accept()
    finally:
        for srv in servers:
            srv.close()
    # the other way round works: the host opens, the VE answers
    assert subprocess.run(["ping", "-c1", "-W2", V4[A]], capture_output=True).returncode == 0
    assert subprocess.run(["ping", "-c1", "-W2", V6[A]], capture_output=True).returncode == 0
    assert sh(rt, A, "(echo from-ve | nc -l -p 7720 >/dev/null 2>&1 &)")[0] == 0
    deadline = time.monotonic() + 5
    while True:
        try:
            with socket.create_connection((V4[A], 7720), timeout=2) as c:
                assert c.recv(100) == b"from-ve\n"
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_host_end_reverse_path_filter_and_no_router_advertisements(rt: Runtime) -> None:
    hif = rt.paths.host_ifname(A)
    assert Path(f"/proc/sys/net/ipv4/conf/{hif}/rp_filter").read_text().strip() == "1"
    assert Path(f"/proc/sys/net/ipv6/conf/{hif}/accept_ra").read_text().strip() == "0"


def _nft_table(rt: Runtime) -> str:
    tag = rt.paths.tag
    r = subprocess.run(["nft", "list", "table", "inet", f"vzpkg_{tag}" if tag else "vzpkg"],
                       capture_output=True, text=True, check=False)
    return r.stdout


def test_ipadd_ipdel_and_stop_update_the_filter(rt: Runtime) -> None:
    """The filter follows the VE's addresses; a stopped VE leaves nothing in it."""
    ctid = 9374
    hif = rt.paths.host_ifname(ctid)
    rt.create(ctid, "busybox-1", ipadd=["198.18.97.4"])
    try:
        rt.start(ctid)
        table = _nft_table(rt)
        assert f'"{hif}" . 198.18.97.4' in table, table
        rt.set(ctid, {"IP_ADDRESS": "198.18.97.4 198.18.97.5 fd5a:97::5"}, save=True)
        table = _nft_table(rt)
        assert f'"{hif}" . 198.18.97.5' in table and f'"{hif}" . fd5a:97::5' in table
        assert subprocess.run(["ping", "-c1", "-W2", "198.18.97.5"],
                              capture_output=True).returncode == 0
        rt.set(ctid, {"IP_ADDRESS": "198.18.97.5 fd5a:97::5"}, save=True)
        table = _nft_table(rt)
        assert f'"{hif}" . 198.18.97.4' not in table and f'"{hif}" . 198.18.97.5' in table
        # the VE puts the taken address back on itself: the host does not take it
        _ve_ip(rt, ctid, "add", "198.18.97.4")
        listener = in_netns(rt, C, LISTEN, V4[C], "7730", "3")
        assert listener.stdout is not None and listener.stdout.readline() == "ready\n"
        fwd = _forwarding(hif, 4, True)
        try:
            in_netns(rt, ctid, SEND, "198.18.97.4", "0", V4[C], "7730", "old").wait(20)
            in_netns(rt, ctid, SEND, "198.18.97.5", "0", V4[C], "7730", "kept").wait(20)
            out = listener.communicate(timeout=20)[0].split()
        finally:
            fwd.write_text("0")
        assert "kept" in out and "old" not in out, out
        rt.stop(ctid)
        assert hif not in _nft_table(rt)
        assert V4[A] in _nft_table(rt)          # the others keep theirs
    finally:
        rt.destroy(ctid)


def test_start_fails_closed_without_nftables(rt: Runtime, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """No nftables: the VE does not start, and no veth, route, cgroup or rule is left."""
    ctid = 9375
    hif = rt.paths.host_ifname(ctid)
    rt.create(ctid, "busybox-1", ipadd=["198.18.97.6"])
    try:
        with monkeypatch.context() as m:     # as on a host without libnftables
            m.setattr(netfilter, "LIBRARY", str(tmp_path / "libnftables.so.1"))
            m.setattr(netfilter, "_lib", None)
            with pytest.raises(VeError, match="nftables") as ei:
                rt.start(ctid)
        assert "nft" in str(ei.value) and ei.value.hint
        assert not rt.state(ctid).running
        assert not net.link_exists(hif)
        assert not rt.cgroups.exists(str(ctid))
        assert hif not in _nft_table(rt)
        routes = subprocess.run(["ip", "route", "show", "table", "all", "198.18.97.6"],
                                capture_output=True, text=True).stdout
        assert routes == ""
    finally:
        rt.destroy(ctid)


def test_an_address_routed_to_a_running_ve_is_not_taken(rt: Runtime) -> None:
    """A second VE configured with A's address does not start (it would take A's host
    route); A keeps working."""
    ctid = 9376
    rt.create(ctid, "busybox-1", ipadd=["198.18.97.7"])
    try:
        cfg = rt.paths.conf(ctid)
        cfg.write_text(cfg.read_text().replace("198.18.97.7", V4[A]))
        with pytest.raises(VeError, match="already routed"):
            rt.start(ctid)
        assert not net.link_exists(rt.paths.host_ifname(ctid))
        dev = subprocess.run(["ip", "route", "show", V4[A]], capture_output=True,
                             text=True).stdout
        assert rt.paths.host_ifname(A) in dev, dev
        assert subprocess.run(["ping", "-c1", "-W2", V4[A]],
                              capture_output=True).returncode == 0
    finally:
        rt.destroy(ctid)
