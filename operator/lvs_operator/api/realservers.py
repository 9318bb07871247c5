"""The wire format of `status.realServers`: what the controller publishes and every director
programs. Pure.

The controller turns a VirtualServer's backend into these entries (`controller.resolve`);
each agent reads them back with `RealServerStatus.from_json` and programs `endpoint()`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lvs_operator.api import spec
from lvs_operator.model import IPAddress


@dataclass(frozen=True)
class RealServerStatus:
    """One entry of `status.realServers`.

    `port` None means the virtual port (or its NAT targetPort), as in `spec.Endpoint`.
    `node` and `pod` say where an endpoint runs; they are None for static addresses.
    """

    ip: IPAddress
    port: int | None
    weight: int
    ready: bool
    node: str | None = None
    pod: str | None = None

    def sort_key(self) -> tuple[int, int, int]:
        """Return a tuple that orders entries deterministically (both families)."""
        return (self.ip.version, int(self.ip), self.port or 0)

    def to_json(self) -> dict[str, Any]:
        """Return the entry as the API stores it (absent fields left out)."""
        entry: dict[str, Any] = {"ip": str(self.ip)}
        if self.port is not None:
            entry["port"] = self.port
        entry["weight"] = self.weight
        entry["ready"] = self.ready
        if self.node:
            entry["node"] = self.node
        if self.pod:
            entry["pod"] = self.pod
        return entry

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RealServerStatus:
        """Return the entry `raw` (one item of `status.realServers`) describes.

        Raises:
            ValueError: when `ip` is not an address or `port`/`weight` are not numbers.
        """
        port = raw.get("port")
        weight = raw.get("weight", 1)
        if (port is not None and not isinstance(port, int)) or not isinstance(weight, int):
            raise ValueError(f"real server {raw!r}: port and weight must be numbers")
        return cls(ip=ipaddress.ip_address(raw.get("ip", "")), port=port, weight=weight,
                   ready=bool(raw.get("ready", True)), node=raw.get("node"), pod=raw.get("pod"))

    def endpoint(self) -> spec.Endpoint:
        """Return this entry as the `spec.Endpoint` that `spec.services` turns into IPVS."""
        return spec.Endpoint(address=self.ip, port=self.port, weight=self.weight)


def to_json(real_servers: Iterable[RealServerStatus]) -> list[dict[str, Any]]:
    """Return `status.realServers` for `real_servers`."""
    return [r.to_json() for r in real_servers]
