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
table is made with a root's first started VE and stays (with empty sets, matching
nothing) until the root's last VE is destroyed; a start only adds set elements to
it, and rewrites the chains only when they are not as written here (someone
flushed them), so a start costs no kernel grace period.  A stopped VE's elements go
at its stop.

nft's own library, libnftables (package libnftables1, which nft itself uses), runs
the commands in this process: a start pays no nft process and cache set-up.  Without
it there is no VE networking: :func:`allow` raises and nothing is created.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Iterable
from typing import Any

from vzpkg.core.errors import VeError
from vzpkg.runtime import state

_TAGGED_IF = re.compile(r"v([0-9a-f]{5})[0-9]+")
_ND = "nd-neighbor-solicit, nd-neighbor-advert"
LOCK = "/run/vzpkg-netfilter.lock"

Addr = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def table_name(tag: str) -> str:
    """The table of the VZ_ROOT whose tag (VzPaths.tag) is *tag*."""
    return f"vzpkg_{tag}" if tag else "vzpkg"


def table_for(hif: str) -> str:
    """The table of the root a host interface name belongs to: ``vethCTID.0`` is
    /vz's, ``vTAGCTID`` the root tagged TAG (see VzPaths.host_ifname)."""
    m = _TAGGED_IF.fullmatch(hif)
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


LIBRARY = "libnftables.so.1"
_JSON = 1 << 4          # NFT_CTX_OUTPUT_JSON
_lib: Any = None


def _library() -> Any:
    global _lib
    if _lib is None:
        import ctypes
        try:
            lib = ctypes.CDLL(LIBRARY)
        except OSError:
            raise VeError("VE networking needs nftables to filter the VE's traffic, and "
                          f"its library {LIBRARY} was not found",
                          hint="install the nftables package (apt-get install nftables); "
                               "the VE was not started") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint]
        for f in ("nft_ctx_free", "nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, f).argtypes = [ctypes.c_void_p]
        for f in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, f).argtypes = [ctypes.c_void_p]
            getattr(lib, f).restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        _lib = lib
    return _lib


def _run(script: str, *, json_out: bool = False) -> tuple[int, str, str]:
    """Run nft commands (the syntax of ``nft -f``) in one transaction: (status,
    output, error text)."""
    lib = _library()
    ctx = lib.nft_ctx_new(0)
    if not ctx:
        raise VeError("VE traffic filter: libnftables could not make a context")
    try:
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        if json_out:
            lib.nft_ctx_output_set_flags(ctx, _JSON)
        rc = lib.nft_run_cmd_from_buffer(ctx, script.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        return int(rc), out, err
    finally:
        lib.nft_ctx_free(ctx)


def _nft(script: str) -> str:
    rc, out, err = _run(script)
    if rc != 0:
        first = script.strip().splitlines()[0] if script.strip() else ""
        raise VeError(f"VE traffic filter: nft '{first}'... failed: {err.strip()}",
                      hint="the kernel needs nf_tables (CONFIG_NF_TABLES, "
                           "CONFIG_NF_TABLES_INET, conntrack)")
    return out


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
    lines = [f'add element inet {table} ves {{ "{hif}" }}', *_elements(table, addrs, hif)]
    with _locked():
        listed = _listing(table)
        if listed is None or not _intact(listed):
            lines.insert(0, _ruleset(table))
        _nft("\n".join(lines) + "\n")


def forbid(hif: str, addrs: Iterable[Addr]) -> None:
    """Take *addrs* away from *hif*'s VE (those it has)."""
    want = {(hif, str(a.ip)) for a in addrs}
    table = table_for(hif)
    with _locked():
        have = [e for e in _elements_of(_listing(table)) if (e[1], e[2]) in want]
        _delete(table, have)


def forget(hif: str) -> None:
    """Remove every element of *hif* from its root's table (VE stopped).  Does
    nothing when nftables is not installed or there is no such table (then no rule
    can be in place either)."""
    try:
        _library()
    except VeError:
        return
    table = table_for(hif)
    with _locked():
        _delete(table, [e for e in _elements_of(_listing(table)) if e[1] == hif])


def drop_unused(tag: str) -> None:
    """Remove the table of the root tagged *tag* when no VE interface is in it (the
    root's last VE was destroyed)."""
    try:
        _library()
    except VeError:
        return
    table = table_name(tag)
    with _locked():
        listed = _listing(table)
        if listed is not None and not any(s == "ves" for s, _, _ in _elements_of(listed)):
            _nft(f"delete table inet {table}\n")


def tables() -> list[str]:
    rc, out, _ = _run("list tables inet", json_out=True)
    data = json.loads(out or '{"nftables": []}') if rc == 0 else {}
    return [o["table"]["name"] for o in data.get("nftables", [])
            if "table" in o and re.fullmatch(r"vzpkg(_[0-9a-f]{5})?", o["table"]["name"])]


# rules per chain of _ruleset: a table whose chains hold other counts was changed
_RULES = {"prerouting": 1, "from_ve": 4, "input": 1, "to_host": 3}
Listing = list[dict[str, Any]]


def _listing(table: str) -> Listing | None:
    """The table's objects (nft's JSON), in one listing; None without the table."""
    rc, out, _ = _run(f"list table inet {table}", json_out=True)
    if rc != 0:
        return None
    objs: Listing = json.loads(out or '{"nftables": []}').get("nftables", [])
    return objs


def _intact(listed: Listing) -> bool:
    chains = {o["chain"]["name"] for o in listed if "chain" in o}
    rules: dict[str, int] = {}
    for o in listed:
        if "rule" in o:
            rules[o["rule"]["chain"]] = rules.get(o["rule"]["chain"], 0) + 1
    sets = {o["set"]["name"] for o in listed if "set" in o}
    return chains == set(_RULES) and rules == _RULES and {"ves", "src4", "src6"} <= sets


def _elements_of(listed: Listing | None) -> list[tuple[str, str, str | None]]:
    """(set, interface, address or None) of the listed table's elements."""
    out: list[tuple[str, str, str | None]] = []
    for o in listed or []:
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
    _nft("\n".join(lines) + "\n")
