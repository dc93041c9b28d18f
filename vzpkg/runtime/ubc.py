"""User beancounters: OpenVZ's per-VE resource counters, read from cgroups.

Each :class:`Beancounter` is one row of OpenVZ's ``/proc/user_beancounters``:
how much of a resource the VE holds now, the most it held, its barrier and
limit, and how often the limit refused it (``failcnt``).  Units are OpenVZ's:
pages of 4 KiB for ``physpages``/``swappages``, bytes for ``kmemsize``,
tasks for ``numproc``.  :data:`UNLIMITED` stands for no limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from vzpkg.runtime.params import UNLIMITED

VERSION = "2.5"


@dataclass(frozen=True)
class Beancounter:
    resource: str
    held: int
    maxheld: int
    barrier: int
    limit: int
    failcnt: int
    counted: bool = True    # False: no kernel counter (held and maxheld mean nothing)

    @property
    def unlimited(self) -> bool:
        return self.limit >= UNLIMITED

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["counted"]
        if not self.counted:
            d["held"] = d["maxheld"] = None
        return d


def format_table(per_ve: Mapping[str, Iterable[Beancounter]],
                 *, only_failed: bool = False) -> str:
    """The ``/proc/user_beancounters`` layout for each VE in *per_ve*."""
    w = 20
    lines = [f"Version: {VERSION}",
             f"{'uid':>10}  {'resource':<12}{'held':>{w}} {'maxheld':>{w}} "
             f"{'barrier':>{w}} {'limit':>{w}} {'failcnt':>{w}}"]
    for ctid, counters in per_ve.items():
        first = True
        for bc in counters:
            if only_failed and not bc.failcnt:
                continue
            uid = f"{ctid}:" if first else ""
            first = False
            held, maxheld = (bc.held, bc.maxheld) if bc.counted else ("-", "-")
            lines.append(f"{uid:>10}  {bc.resource:<12}{held:>{w}} {maxheld:>{w}} "
                         f"{bc.barrier:>{w}} {bc.limit:>{w}} {bc.failcnt:>{w}}")
    return "\n".join(lines) + "\n"


def to_json(per_ve: Mapping[str, Iterable[Beancounter]]) -> dict[str, list[dict[str, Any]]]:
    return {ctid: [bc.as_dict() for bc in counters] for ctid, counters in per_ve.items()}


# -- vzubc's human view --------------------------------------------------------------

NEAR = 0.9          # held at or above 90% of a barrier or limit is "near" it
_RED, _YELLOW, _OFF = "\x1b[31m", "\x1b[33m", "\x1b[0m"


def human(n: int, unit: str) -> str:
    """*n* in *unit* ("pages", "bytes", "count") the way vzubc shows it: sizes with
    K/M/G/T, "-" for unlimited."""
    if n >= UNLIMITED:
        return "-"
    if unit == "count":
        return str(n)
    b = float(n * 4096 if unit == "pages" else n)
    for suffix in ("", "K", "M", "G", "T"):
        if b < 1024 or suffix == "T":
            return f"{b:.0f}" if not suffix else f"{b:.1f}{suffix}"
        b /= 1024
    return str(n)   # (not reached)


def _pct(held: int, of: int) -> str:
    return "-" if of >= UNLIMITED or of <= 0 else f"{100 * held // of}"


def near(bc: Beancounter) -> bool:
    return bc.counted and any(of < UNLIMITED and of > 0 and bc.held >= NEAR * of
                              for of in (bc.barrier, bc.limit))


def format_human(per_ve: Mapping[str, Iterable[Beancounter]], units: Mapping[str, str],
                 *, names: Mapping[str, str] | None = None,
                 fail_delta: Mapping[str, Mapping[str, int]] | None = None,
                 quiet: bool = False, colour: bool = False) -> str:
    """OpenVZ vzubc's table: held and maxheld with their share of barrier and limit,
    sizes in K/M/G; *fail_delta* (vzubc -r) gives the failures since the last run in
    place of the totals; *quiet* keeps the rows that failed or are near a limit."""
    out: list[str] = []
    head = (f"{'HELD':>8} {'Bar%':>4} {'Lim%':>4}|{'MAXH':>8} {'Bar%':>4} {'Lim%':>4}|"
            f"{'BAR':>8}|{'LIM':>8}|{'FAIL':>6}")
    for ctid, counters in per_ve.items():
        name = (names or {}).get(ctid)
        title = f"VE {ctid}" + (f" ({name})" if name else "")
        rows: list[str] = []
        for bc in counters:
            unit = units.get(bc.resource, "count")
            fails = bc.failcnt if fail_delta is None else \
                fail_delta.get(ctid, {}).get(bc.resource, bc.failcnt)
            if quiet and not fails and not near(bc):
                continue
            if bc.counted:
                held = (f"{human(bc.held, unit):>8} {_pct(bc.held, bc.barrier):>4} "
                        f"{_pct(bc.held, bc.limit):>4}")
                maxh = (f"{human(bc.maxheld, unit):>8} {_pct(bc.maxheld, bc.barrier):>4} "
                        f"{_pct(bc.maxheld, bc.limit):>4}")
            else:
                held = maxh = f"{'-':>8} {'-':>4} {'-':>4}"
            fail = ("+" if fail_delta is not None and fails else "") + str(fails)
            line = (f"{bc.resource:>14} |{held}|{maxh}|{human(bc.barrier, unit):>8}|"
                    f"{human(bc.limit, unit):>8}|{fail if fails else '-':>6}")
            if colour and fails:
                line = _RED + line + _OFF
            elif colour and near(bc):
                line = _YELLOW + line + _OFF
            rows.append(line)
        if quiet and not rows:
            continue
        rule = "-" * len(f"{'':>14} |{head}")
        out += [rule, f"{title[:14]:<14} |{head}", rule, *rows]
    return "\n".join(out) + ("\n" if out else "")
