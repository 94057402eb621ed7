"""With --etcd: one control plane (control.sync.ControlPlane) per network of the agent.

control/ syncs one network per ControlPlane; an agent with several networks runs one per
network, all feeding the same switch (the table sink: every command carries its VNI, so each
only touches its own network's tables). This module drives them through control/agent.py's
public functions only (control_plane_from_control, handlers), and routes the control-plane ops
of the control socket (node_info, endpoint_*, control_status) to the right network by the
request's "network" (etcd name) or "vni"; without either, an agent with one network answers
for it.
"""
from __future__ import annotations

from typing import Any

from control import agent as control_agent
from dataplane.networks import NetSpec


def bootstrap(conf: dict[str, Any], s: NetSpec, *, several: bool) -> Any:
    """A bootstrapped ControlPlane for network s.name (config read or created, block taken).
    Raises ValueError (bad config, VNI mismatch) or TimeoutError (etcd unreachable)."""
    c = {k: v for k, v in conf.items() if k != "_plane"}
    c["network"] = s.name
    if s.vni:
        c["vni"] = s.vni
    if several and c.get("subnet"):
        raise ValueError("--subnet creates one network's config; with several networks, "
                         "create each with `vxtap network set` first")
    cp = control_agent.control_plane_from_control(c)
    cfg = cp.bootstrap(timeout=float(c.get("bootstrap_timeout") or 30.0))
    if s.vni and cfg.vni != s.vni:
        cp.stop()
        raise ValueError(f"network {s.name!r} has VNI {cfg.vni} in etcd but the agent was "
                         f"given VNI {s.vni}")
    return cp


def _pick(agent: Any, q: dict[str, Any]) -> Any:
    """The network (dataplane.agent.Network) with a control plane a request is about."""
    synced = [n for n in agent.nets.values() if n.control is not None]
    key = q.get("network", q.get("vni"))
    if key is None:
        if len(synced) == 1:
            return synced[0]
        raise ValueError("this agent syncs several networks ("
                         + ", ".join(n.spec.name for n in synced) + "): give 'network'")
    for n in synced:
        if key in (n.spec.name, n.spec.vni):
            return n
    raise ValueError(f"no etcd network {key!r} on this agent (it syncs "
                     + ", ".join(n.spec.name for n in synced) + ")")


def register_ops(srv: Any, agent: Any) -> None:
    """Register the control-plane ops once; each call goes to the selected network's own
    handler (control/agent.py handlers())."""
    names = _op_names()

    def route(op: str) -> Any:
        def h(q: dict[str, Any]) -> Any:
            n = _pick(agent, q)
            fn = control_agent.handlers(n.control, bridge=n.spec.bridge or "",
                                        mtu=int(n.tap.mtu))[op]
            args = {k: v for k, v in q.items() if k not in ("network", "vni")}
            return fn(args)
        return h

    for op in names:
        srv.register(op, route(op))


def _op_names() -> list[str]:
    """The op names control/agent.py registers (taken from handlers() on a stand-in)."""
    class _Nothing:
        pass
    return list(control_agent.handlers(_Nothing(), bridge="", mtu=0))  # type: ignore[arg-type]
