"""The networks of one agent: `--net NAME:VNI:TAP[:BRIDGE]` specs and their checks.

One agent serves several VXLAN networks (VNIs), each with its own TAP and bridge, like one
kernel `vxlan` device per VNI on a node. The single-network flags (`--tap --vni --bridge`) are
the one-network shorthand. Everything here is checked before any device is created: a
malformed spec, a duplicate name, VNI or TAP name is a `NetSpecError` naming the culprit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from fastpath import addr

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")     # also valid as an etcd name
IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")                    # Linux IFNAMSIZ - 1, no '/'


class NetSpecError(ValueError):
    """A network spec that cannot be served (malformed, duplicate)."""


@dataclass(frozen=True)
class NetSpec:
    name: str
    vni: int                      # 0 = not known yet (etcd: from the network's config)
    tap: str
    bridge: str | None = None
    mac: str | None = None        # TAP MAC (default random, locally administered)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vni": self.vni, "tap": self.tap, "bridge": self.bridge,
                "mac": self.mac}


def check(name: Any, vni: Any, tap: Any, bridge: Any = None, mac: Any = None, *,
          vni_optional: bool = False) -> NetSpec:
    """A NetSpec from separate fields (control socket `net_add`), or NetSpecError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise NetSpecError(f"bad network name {name!r}: 1-63 of A-Z a-z 0-9 _ . -, "
                           "starting with a letter or digit")
    if vni in (None, 0, "") and vni_optional:
        vni = 0
    else:
        try:
            addr.check_vni(vni)
        except ValueError as e:
            raise NetSpecError(f"network {name}: {e}") from None
    for what, v in (("TAP", tap), ("bridge", bridge)):
        if v is None and what == "bridge":
            continue
        if not isinstance(v, str) or not IFNAME_RE.match(v):
            raise NetSpecError(f"network {name}: bad {what} name {v!r} (1..15 characters, "
                               "no whitespace, '/' or ':')")
    if mac is not None:
        try:
            addr.check_unicast_mac(mac)
        except ValueError as e:
            raise NetSpecError(f"network {name}: {e}") from None
    return NetSpec(name, vni, tap, bridge or None, mac.lower() if mac else None)


def parse(spec: str, *, vni_optional: bool = False) -> NetSpec:
    """`NAME:VNI:TAP[:BRIDGE]` (VNI may be empty with etcd: `NAME::TAP:BRIDGE`)."""
    parts = spec.split(":") if isinstance(spec, str) else []
    if len(parts) not in (3, 4) or not all(parts[i] for i in (0, 2)):
        raise NetSpecError(f"--net wants NAME:VNI:TAP[:BRIDGE], got {spec!r}")
    vni: Any = parts[1]
    if vni == "":
        if not vni_optional:
            raise NetSpecError(f"--net {spec!r}: a VNI is required without --etcd")
        vni = 0
    elif not vni.isdigit():
        raise NetSpecError(f"--net {spec!r}: VNI {vni!r} is not a number")
    else:
        vni = int(vni)
    bridge = parts[3] if len(parts) == 4 and parts[3] else None
    return check(parts[0], vni, parts[2], bridge, vni_optional=vni_optional)


def check_unique(specs: Iterable[NetSpec]) -> list[NetSpec]:
    """The specs, or NetSpecError on a duplicate name, VNI (other than 0) or TAP."""
    out: list[NetSpec] = []
    for s in specs:
        for o in out:
            if s.name == o.name:
                raise NetSpecError(f"network name {s.name!r} given twice")
            if s.vni and s.vni == o.vni:
                raise NetSpecError(f"VNI {s.vni} given twice (networks {o.name} and {s.name})")
            if s.tap == o.tap:
                raise NetSpecError(f"TAP {s.tap} given twice (networks {o.name} and {s.name})")
            if s.bridge and s.bridge == o.bridge:        # one bridge = one L2 domain
                raise NetSpecError(f"bridge {s.bridge} given to two networks ({o.name} and "
                                   f"{s.name}): that would join their tenants at layer 2")
            if s.bridge in (o.tap,) or o.bridge in (s.tap,):
                raise NetSpecError(f"networks {o.name} and {s.name}: a TAP name is also "
                                   "used as a bridge name")
        out.append(s)
    return out
