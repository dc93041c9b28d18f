"""Host boot and shutdown: the VEs marked ``ONBOOT=yes`` start in ``BOOTORDER``.

``vzctl boot`` starts every VE of the root with ONBOOT=yes that is not running:
higher BOOTORDER first, VEs without one last, ties by CTID (as OpenVZ's ``vz``
service does).  ``vzctl boot --stop`` stops every running VE in the reverse order,
for the host's shutdown.  :data:`UNIT` is the host's systemd unit that runs both;
``vzctl boot --install-unit`` writes it.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vzpkg.core.errors import ConfigError, VzError
from vzpkg.runtime.config import VeConfig
from vzpkg.runtime.paths import DEFAULT_ROOT, VzPaths

UNIT = """\
# written by vzctl boot --install-unit
[Unit]
Description=OpenVZ-style VEs of {root} (vzctl): start those marked ONBOOT
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
Environment=VZ_ROOT={root}
ExecStart={vzctl} boot
ExecStop={vzctl} boot --stop
TimeoutSec=0

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class Outcome:
    ctid: int
    ok: bool
    text: str


def _order_key(paths: VzPaths, ctid: int) -> tuple[int, int] | None:
    """(sort key) for an ONBOOT VE; None if it does not start at boot."""
    try:
        cfg = VeConfig.load(paths.conf(ctid))
    except ConfigError:
        return (1 << 62, ctid)             # unreadable: tried last, and fails visibly
    if (cfg.get("ONBOOT") or "no") != "yes":
        return None
    order = cfg.get("BOOTORDER")
    return (-int(order) if order and order.isdigit() else 1 << 61, ctid)


def boot_order(paths: VzPaths) -> list[int]:
    keyed = [(k, c) for c in paths.ctids() if (k := _order_key(paths, c)) is not None]
    return [c for _, c in sorted(keyed)]


def run_all(ctids: list[int], act: Callable[[int], str]) -> list[Outcome]:
    """*act* on each VE in turn; one failing never stops the others."""
    out = []
    for ctid in ctids:
        try:
            out.append(Outcome(ctid, True, act(ctid)))
        except VzError as exc:
            out.append(Outcome(ctid, False, exc.message))
    return out


def unit_text(paths: VzPaths) -> str:
    vzctl = Path(sys.executable).parent / "vzctl"
    return UNIT.format(root=paths.root, vzctl=shlex.quote(str(vzctl)))


def unit_name(paths: VzPaths) -> str:
    return "vz.service" if paths.root == DEFAULT_ROOT else f"vz-{paths.tag}.service"
