"""What ``vzpkg install|remove|update|list|info|check-updates CTID`` runs inside a VE.

One shell script, run by the VE's own ``/bin/sh`` as the VE's root (joined or
in fresh namespaces, see :mod:`vzpkg.runtime.vepkg`), finds the VE's package
manager and runs it:

* **apt** (``apt-get`` and ``dpkg-query``): indexes are fetched into a private
  directory (``/var/lib/apt/lists.vzpkg``) through the host's proxy
  (``Acquire::http::Proxy``, for this command only; the VE's sources and keys
  are its own), packages are downloaded into a private archive directory, and
  only when the whole operation succeeded do the fresh indexes replace the
  VE's.  The private directory starts as hard links to the VE's lists, so that
  an unchanged repository is a 'Hit' for apt (the proxy answers
  ``If-Modified-Since``): no index is downloaded or unpacked again (apt still
  checks the signature with the VE's keys, and its update still rebuilds its
  cache, ``/var/cache/apt/vzpkg/srcpkgcache.bin``, the VE's own).  A failure
  (a held dpkg lock, a signature apt refuses, a package it cannot find)
  leaves the VE as it was: apt takes dpkg's lock before it changes anything,
  and apt-get refuses at once when another process holds it.
* **dnf** in the VE: the same, with ``--setopt=proxy=``.
* an **rpm database without dnf** (a minimal RPM VE): exit status
  :data:`NEED_HOST_DNF`; the host's dnf serves it (:mod:`vzpkg.runtime.hostdnf`).
* **nothing** (busybox): exit status :data:`NO_MANAGER`.

Package names are checked on the host (:func:`check_package`) before they
reach the script, so the script may split them on blanks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from vzpkg.core.errors import UsageError

NEED_HOST_DNF = 97
NO_MANAGER = 98
NOTHING_TO_DO = 0


class Op(StrEnum):
    INSTALL = "install"
    REMOVE = "remove"
    UPDATE = "update"
    LIST = "list"
    INFO = "info"
    CHECK = "check-updates"


NETWORK_OPS = frozenset({Op.INSTALL, Op.UPDATE, Op.INFO, Op.CHECK})
CHANGING_OPS = frozenset({Op.INSTALL, Op.REMOVE, Op.UPDATE})

# apt: name[:arch][=version|/release]; rpm: name[-version[-release]][.arch]
_PACKAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9+._:~-]*([=/][A-Za-z0-9+._:~-]+)?")


def check_package(name: str) -> str:
    if not _PACKAGE.fullmatch(name) or len(name) > 200:
        raise UsageError(f"{name!r} is not a package name",
                         hint="give names such as hello, hello=2.10-3 or hello.x86_64")
    return name


SCRIPT = r"""
op=$1; proxy=$2; security=$3; dry=$4; shift 4
pkgs="$*"
export LC_ALL=C DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin
if command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
  pm=apt
elif command -v dnf >/dev/null 2>&1; then
  pm=dnf
elif [ -d /var/lib/rpm ] || [ -d /usr/lib/sysimage/rpm ]; then
  exit 97
else
  echo "vzpkg: no package manager in this VE (no apt-get, dnf or rpm database)" >&2
  exit 98
fi
echo "vzpkg: package manager: $pm" >&2
if [ $pm = apt ]; then
  T=/var/lib/apt/lists.vzpkg
  A=/var/cache/apt/archives.vzpkg
  C=/var/cache/apt/vzpkg
  rm -rf "$T" "$A"
  trap 'rm -rf "$T" "$A"' EXIT
  set -- -q -o "Acquire::http::Proxy=$proxy" -o "Acquire::https::Proxy=$proxy" \
    -o "Dir::State::Lists=$T" -o "Dir::Cache::Archives=$A" \
    -o Dir::Cache::pkgcache= -o "Dir::Cache::srcpkgcache=$C/srcpkgcache.bin" \
    -o Acquire::CompressionTypes::Order::=gz \
    -o Acquire::Languages=none -o Dpkg::Use-Pty=0 -o APT::Get::Assume-Yes=true \
    -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--force-confdef \
    -o APT::Install-Recommends=false -o DPkg::Lock::Timeout=0
  [ "$dry" = 1 ] && sim=-s || sim=
  mkdir -p "$T/partial" "$A/partial" "$C" || exit 1
  # the VE's lists seed the private ones, as hard links (apt never writes into a
  # list file: it renames a new one over it): where the proxy's copy of a
  # repository is the one the VE has, apt's update is a 'Hit' (it still checks
  # the signature with the VE's keys) and downloads and unpacks no index, and
  # the cache apt built from these lists last time ($C) is still valid
  for f in /var/lib/apt/lists/*; do
    case $f in */lock) continue ;; esac
    [ -f "$f" ] && [ ! -L "$f" ] && ln "$f" "$T/"
  done
  fetch() {
    out=$(apt-get "$@" update 2>&1); rc=$?
    printf '%s\n' "$out" >&2
    [ $rc = 0 ] || exit 100
    # apt-get update exits 0 on a repository it could not verify: it only warns
    case $out in *"GPG error"*|*"is not signed"*|*NO_PUBKEY*) exit 100 ;; esac
  }
  commit() {   # the indexes this command used become the VE's
    rm -rf /var/lib/apt/lists.old
    if [ -d /var/lib/apt/lists ]; then mv /var/lib/apt/lists /var/lib/apt/lists.old; fi
    mv "$T" /var/lib/apt/lists && rm -rf /var/lib/apt/lists.old
    mkdir -p /var/lib/apt/lists/partial
  }
  pending() {
    apt-get "$@" -s upgrade |
      sed -n 's/^Inst \([^ ]*\) \[\([^]]*\)\] (\([^ ]*\) \(.*\))$/UPDATE \1 \2 \3 \4/p'
  }
  case $op in
  list) dpkg-query -W -f='PKG ${db:Status-Abbrev} ${Package} ${Version} ${Architecture}\n' ;;
  info)
    fetch "$@"
    for p in $pkgs; do apt-cache "$@" policy "$p"; apt-cache "$@" show "$p" || exit 100; done ;;
  check-updates) fetch "$@"; pending "$@"; commit ;;
  install) fetch "$@"; apt-get "$@" $sim install $pkgs || exit 100; [ -n "$sim" ] || commit ;;
  remove) apt-get "$@" $sim remove $pkgs || exit 100 ;;
  update)
    fetch "$@"
    if [ "$security" = 1 ]; then
      pkgs=$(pending "$@" | awk '$0 ~ /-[Ss]ecurity/ {print $2}' | tr '\n' ' ')
      if [ -z "$pkgs" ]; then echo "vzpkg: no security updates"; rm -rf "$T"; exit 0; fi
      apt-get "$@" $sim install --only-upgrade $pkgs || exit 100
    elif [ -n "$pkgs" ]; then
      apt-get "$@" $sim install --only-upgrade $pkgs || exit 100
    else
      apt-get "$@" $sim upgrade || exit 100
    fi
    [ -n "$sim" ] || commit ;;
  esac
  exit 0
fi
set -- -y -q --setopt=proxy="$proxy" --setopt=keepcache=0
[ "$dry" = 1 ] && set -- "$@" --assumeno
dnf() {   # --assumeno shows the transaction, then says it aborted (status 1)
  if [ "$dry" != 1 ]; then command dnf "$@"; return; fi
  out=$(command dnf "$@" 2>&1); rc=$?
  printf '%s\n' "$out"
  case $out in *"Operation aborted"*) return 0 ;; esac
  return $rc
}
case $op in
list) rpm -qa --qf 'PKG ii %{NAME} %{VERSION}-%{RELEASE} %{ARCH}\n' ;;
info) dnf "$@" info $pkgs ;;
check-updates)
  dnf "$@" check-update >/dev/null 2>&1; rc=$?
  [ $rc = 0 ] || [ $rc = 100 ] || exit 1
  sec=$(dnf "$@" updateinfo list --security 2>/dev/null | awk '{print $3}')
  dnf "$@" -q check-update | awk -v sec=" $sec " 'NF==3 && $1 ~ /\./ {
    n=$1; sub(/\.[^.]*$/, "", n); s=(index(sec, " " n "-") ? "security" : "-");
    print "UPDATE " n " - " $2 " " $3 " " s }'; exit 0 ;;
install) dnf "$@" install $pkgs ;;
remove) dnf "$@" remove $pkgs ;;
update)
  if [ "$security" = 1 ]; then dnf "$@" upgrade --security $pkgs
  else dnf "$@" upgrade $pkgs; fi ;;
esac
"""


def argv(op: Op, proxy: str, packages: tuple[str, ...], *, security: bool = False,
         dry_run: bool = False) -> list[str]:
    """The command line that runs :data:`SCRIPT` in the VE."""
    return ["/bin/sh", "-c", SCRIPT, "vzpkg", str(op), proxy or "false",
            "1" if security else "0", "1" if dry_run else "0", *packages]


@dataclass(frozen=True)
class Update:
    name: str
    installed: str
    available: str
    origin: str
    security: bool

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "installed": self.installed,
                "available": self.available, "origin": self.origin,
                "security": self.security}


def parse_updates(text: str) -> list[Update]:
    """The ``UPDATE name installed available origin…`` lines of check-updates."""
    out = []
    for line in text.splitlines():
        if not line.startswith("UPDATE "):
            continue
        f = line.split(maxsplit=4)
        if len(f) < 4:
            continue
        origin = f[4] if len(f) > 4 else ""
        sec = bool(re.search(r"-[Ss]ecurity|Debian-Security|(^|\s)security$", origin))
        out.append(Update(f[1], f[2], f[3], origin, sec))
    return out


def parse_packages(text: str) -> list[dict[str, str]]:
    """The installed packages of a ``list`` run."""
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) == 5 and f[0] == "PKG" and f[1].startswith("i"):
            out.append({"name": f[2], "version": f[3], "arch": f[4]})
    return out


def classify(code: int, text: str) -> tuple[str, str]:
    """(kind, message) for a failed run: what a person needs to know first."""
    if code == NO_MANAGER:
        return ("no-package-manager", "the VE has no package manager (no apt-get, dnf or "
                "rpm database): software in it cannot be managed with vzpkg")
    m = re.search(r"Could not get lock (/\S+?)\.?(?:\s|$)(?:It is held by process (\d+))?",
                  text)
    if m:
        who = f" (held by process {m[2]} in the VE)" if m[2] else ""
        return ("locked", f"the package database is locked: {m[1]}{who}; another "
                "package manager runs in the VE; nothing was changed")
    if "rpm database is locked" in text:
        return ("locked", "the rpm database is locked by another process; nothing was "
                "changed")
    if re.search(r"NO_PUBKEY|BADSIG|is not signed|signatures were invalid|"
                 r"GPG error|signature could not be verified|GPG check FAILED|"
                 r"public key .* is not installed|Signature .*BAD", text):
        return ("signature", "a signature did not verify with the VE's own keys; "
                "nothing was installed (see the log)")
    if re.search(r"Unable to locate package|No match for argument|Unable to find a match",
                 text):
        return ("not-found", "a package was not found in the VE's repositories")
    last = [ln for ln in text.strip().splitlines() if ln.startswith(("E:", "Error"))]
    why = last[-1] if last else (text.strip().splitlines() or ["no output"])[-1]
    return ("failed", f"the package manager failed (status {code}): {why[:300]}")
