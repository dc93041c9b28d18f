"""What may enter the host from a VE's veth: nftables, one table per VZ_ROOT.

A VE's root has CAP_NET_ADMIN and CAP_NET_RAW in its own network namespace, so it
can put any source address on a packet.  Every packet arriving on the host end of
a VE's veth pair therefore goes through this table:

* ``prerouting`` (priority raw, before connection tracking): the source must be one
  of *that* VE's addresses (the ``src4``/``src6`` sets, keyed by interface and
  address); IPv6 neighbour solicitations and advertisements may also come from a
  link-local or the unspecified address.  Anything else is dropped.  A VE cannot
  pose as another VE, the host, or anyone outside, nor ride on a connection the
  host holds with another VE.
* ``input``: a VE reaches the host itself (169.254.0.1, fe80::1, any host address)
  only with replies to connections the host opened, and with neighbour discovery.
  Host services listening on 0.0.0.0 are not offered to VEs.  Forwarded traffic
  (to other VEs, to the world) is not touched here: it already has a true source.

The table is ``inet vzpkg`` for ``/vz`` and ``inet vzpkg_TAG`` for another root
(:func:`table_for`); a root's VEs are the ``ves`` set of interface names.  The
chains are rewritten in one atomic transaction each time a VE gets addresses, so a
table someone flushed is repaired by the next start; the table goes with the root's
last running VE.  Without a working nft
there is no VE networking: :func:`allow` raises and nothing is created.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence

from vzpkg.errors import VeError
from vzpkg.runtime import state

_TAGGED_IF = re.compile(r"^v([0-9a-f]{5})[0-9]+$")
_ND = "nd-neighbor-solicit, nd-neighbor-advert"
LOCK = "/run/vzpkg-netfilter.lock"

Addr = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def table_name(tag: str) -> str:
    """The table of the VZ_ROOT whose tag (VzPaths.tag) is *tag*."""
    return f"vzpkg_{tag}" if tag else "vzpkg"


def table_for(hif: str) -> str:
    """The table of the root a host interface name belongs to: ``vethCTID.0`` is
    /vz's, ``vTAGCTID`` the root tagged TAG (see VzPaths.host_ifname)."""
    m = _TAGGED_IF.match(hif)
    return table_name(m.group(1) if m else "")


def _ruleset(table: str) -> str:
    t = f"inet {table}"
    return f"""\
add table {t}
add set {t} ves {{ type ifname; }}
add set {t} src4 {{ type ifname . ipv4_addr; }}
add set {t} src6 {{ type ifname . ipv6_addr; }}
add chain {t} prerouting {{ type filter hook prerouting priority raw; policy accept; }}
add chain {t} from_ve
add chain {t} input {{ type filter hook input priority filter; policy accept; }}
add chain {t} to_host
flush chain {t} prerouting
flush chain {t} from_ve
flush chain {t} input
flush chain {t} to_host
add rule {t} prerouting iifname @ves jump from_ve
add rule {t} from_ve iifname . ip saddr @src4 return
add rule {t} from_ve iifname . ip6 saddr @src6 return
add rule {t} from_ve ip6 saddr {{ ::, fe80::/10 }} icmpv6 type {{ {_ND} }} return
add rule {t} from_ve counter drop
add rule {t} input iifname @ves jump to_host
add rule {t} to_host ct state established,related accept
add rule {t} to_host icmpv6 type {{ {_ND} }} accept
add rule {t} to_host counter drop
"""


def _nft(args: Sequence[str], script: str | None = None) -> str:
    exe = shutil.which("nft")
    if exe is None:
        raise VeError("VE networking needs nftables to filter the VE's traffic, and "
                      "nft was not found", hint="install the nftables package "
                      "(apt-get install nftables); the VE was not started")
    r = subprocess.run([exe, *args], input=script, capture_output=True, text=True,
                       check=False)
    if r.returncode != 0:
        what = "nft " + " ".join(args)
        raise VeError(f"VE traffic filter: {what} failed: {r.stderr.strip()}",
                      hint="the kernel needs nf_tables (CONFIG_NF_TABLES, "
                           "CONFIG_NF_TABLES_INET, conntrack)")
    return r.stdout


def _elements(table: str, addrs: Iterable[Addr], hif: str) -> list[str]:
    out = []
    for a in addrs:
        out.append(f'add element inet {table} src{a.version} {{ "{hif}" . {a.ip} }}')
    return out


def _locked() -> contextlib.AbstractContextManager[None]:
    """Host-wide: a root's table is removed with its last VE, never while another
    VE of the root is being added to it."""
    return state.flocked(LOCK)


def allow(hif: str, addrs: Iterable[Addr]) -> None:
    """Let *hif*'s VE send from *addrs* (and make *hif* a VE interface of its root).
    Raises VeError, changing nothing, when nftables cannot do it."""
    table = table_for(hif)
    lines = [_ruleset(table), f'add element inet {table} ves {{ "{hif}" }}',
             *_elements(table, addrs, hif)]
    with _locked():
        _nft(["-f", "-"], "\n".join(lines) + "\n")


def forbid(hif: str, addrs: Iterable[Addr]) -> None:
    """Take *addrs* away from *hif*'s VE (those it has)."""
    want = {(hif, str(a.ip)) for a in addrs}
    table = table_for(hif)
    have = [e for e in _listed(table) or [] if (e[1], e[2]) in want]
    _delete(table, have)


def forget(hif: str) -> None:
    """Remove every element of *hif* from its root's table (VE stopped), and the
    table with the root's last VE.  Does nothing when nft is not installed or
    there is no such table (then no rule can be in place either)."""
    if shutil.which("nft") is None:
        return
    table = table_for(hif)
    with _locked():
        listed = _listed(table)
        if listed is None:
            return
        if not any(i != hif for s, i, _ in listed if s == "ves"):
            _nft(["delete", "table", "inet", table])   # the root's last VE
        else:
            _delete(table, [e for e in listed if e[1] == hif])


def tables() -> list[str]:
    data = json.loads(_nft(["-j", "list", "tables", "inet"]) or '{"nftables": []}')
    return [o["table"]["name"] for o in data.get("nftables", [])
            if "table" in o and re.match(r"^vzpkg(_[0-9a-f]{5})?$", o["table"]["name"])]


def _listed(table: str) -> list[tuple[str, str, str | None]] | None:
    """(set, interface, address or None) of the table's elements, in one listing;
    None without the table."""
    exe = shutil.which("nft")
    assert exe is not None
    r = subprocess.run([exe, "-j", "list", "table", "inet", table], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        return None
    out: list[tuple[str, str, str | None]] = []
    for o in json.loads(r.stdout or '{"nftables": []}').get("nftables", []):
        st = o.get("set", {})
        if st.get("name") not in ("ves", "src4", "src6"):
            continue
        for e in st.get("elem", []):
            if isinstance(e, dict) and "concat" in e:
                out.append((st["name"], str(e["concat"][0]), str(e["concat"][1])))
            elif isinstance(e, str):
                out.append((st["name"], e, None))
    return out


def _delete(table: str, elems: list[tuple[str, str, str | None]]) -> None:
    if not elems:
        return
    lines = [f'delete element inet {table} {s} {{ "{i}"{"" if a is None else f" . {a}"} }}'
             for s, i, a in elems]
    _nft(["-f", "-"], "\n".join(lines) + "\n")

