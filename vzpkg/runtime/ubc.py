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
