"""Endpoint records in etcd: one write per add, one delete per removal, no lease."""

from __future__ import annotations

from typing import Any

import pyetcd  # type: ignore[import-untyped]

from .keys import Layout
from .records import EndpointRecord, NetworkConfig, check_ipv4_interface


def read_config(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout) -> NetworkConfig:
    """The network's config; ValueError if it is missing or malformed."""
    value, _ = client.get(layout.config)
    if value is None:
        raise ValueError(f"network {layout.network!r} has no config at {layout.config} "
                         "(create it with `vxtap network set`)")
    try:
        return NetworkConfig.parse(value)
    except ValueError as e:
        raise ValueError(f"{layout.config}: {e}") from None


def make_endpoint(cfg: NetworkConfig, node: str, mac: str, ip: str,
                  gateway: str | None) -> EndpointRecord:
    """Validate an endpoint for this network (the IP must be inside the network subnet)."""
    iface = check_ipv4_interface(ip)
    if iface.ip not in cfg.network:
        raise ValueError(f"ip: {ip} is outside the network subnet {cfg.subnet}")
    return EndpointRecord(mac=mac, ip=ip, node=node, vni=cfg.vni, gateway=gateway or None)


def put_endpoint(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout, container_id: str,
                 ifname: str, rec: EndpointRecord) -> dict[str, Any]:
    key = layout.endpoint(container_id, ifname)
    client.put(key, rec.to_json())
    return {"key": key, **rec.to_dict()}


def delete_endpoint(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout, container_id: str,
                    ifname: str) -> dict[str, Any]:
    """Delete one endpoint; deleting a missing one is not an error (CNI DEL is idempotent)."""
    key = layout.endpoint(container_id, ifname)
    return {"key": key, "deleted": bool(client.delete(key))}


def get_endpoint(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout, container_id: str,
                 ifname: str) -> dict[str, Any] | None:
    key = layout.endpoint(container_id, ifname)
    value, _ = client.get(key)
    if value is None:
        return None
    return {"key": key, **EndpointRecord.parse(value).to_dict()}


def list_endpoints(client: pyetcd.MultiEndpointEtcd3Client, layout: Layout) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for value, meta in client.get_prefix(layout.endpoints):
        key = meta.key.decode(errors="replace")
        try:
            out.append({"key": key, **EndpointRecord.parse(value).to_dict()})
        except ValueError as e:
            out.append({"key": key, "error": str(e)})
    return out
