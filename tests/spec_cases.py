"""One table of VirtualServer specs, valid and invalid, shared by every validator.

`spec.parse` walks it in the unit tier; the CRD (OpenAPI + CEL) will walk the same table
against a real API server, so the two validations cannot drift apart.

Each case: an id, a function that edits a valid base document, and the field path the
error must name (None for a valid document).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Doc = dict[str, Any]


def base() -> Doc:
    """Return a valid DirectRouting VirtualServer with static addresses."""
    return {
        "apiVersion": "lvs.dev/v1alpha1",
        "kind": "VirtualServer",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {
            "vip": "192.0.2.10",
            "ports": [{"port": 80, "protocol": "TCP"}],
            "forwarding": "DirectRouting",
            "scheduler": {"name": "wrr"},
            "backend": {"addresses": [{"ip": "10.0.0.1", "weight": 3}, {"ip": "10.0.0.2"}]},
        },
    }


@dataclass(frozen=True)
class Case:
    id: str
    edit: Callable[[Doc], None]
    error_path: str | None

    def document(self) -> Doc:
        doc = copy.deepcopy(base())
        self.edit(doc)
        return doc


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return edit


def _del(path: str) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        del target[last]
    return edit


def _all(*edits: Callable[[Doc], None]) -> Callable[[Doc], None]:
    def edit(doc: Doc) -> None:
        for one in edits:
            one(doc)
    return edit


NAT = _set("spec.forwarding", "NAT")
TUNNEL = _set("spec.forwarding", "Tunnel")

VALID = [
    Case("base", lambda doc: None, None),
    Case("nat-target-port", _all(NAT, _set("spec.ports", [{"port": 80, "targetPort": 8080}])),
         None),
    Case("tunnel-ipip", _all(TUNNEL, _set("spec.tunnel", {"type": "ipip"})), None),
    Case("tunnel-gue", _all(TUNNEL, _set("spec.tunnel", {"type": "gue", "port": 5555,
                                                          "checksum": "remote"})), None),
    Case("tunnel-gre-csum", _all(TUNNEL, _set("spec.tunnel", {"type": "gre",
                                                               "checksum": "checksum"})), None),
    Case("tunnel-mixed-family", _all(TUNNEL, _set("spec.backend.addresses",
                                                  [{"ip": "2001:db8::1"}])), None),
    Case("ipv6", _all(_set("spec.vip", "2001:db8::10"),
                      _set("spec.backend.addresses", [{"ip": "2001:db8::1"}])), None),
    Case("persistence", _set("spec.persistence", {"timeoutSeconds": 600,
                                                  "netmask": "255.255.255.0"}), None),
    Case("persistence-prefix", _set("spec.persistence", {"netmask": 24}), None),
    Case("sh-flags", _set("spec.scheduler", {"name": "sh", "flags": ["sh-fallback", "sh-port"]}),
         None),
    Case("udp-one-packet", _all(_set("spec.ports", [{"port": 53, "protocol": "UDP"}]),
                                _set("spec.onePacket", True)), None),
    Case("sctp", _set("spec.ports", [{"port": 9000, "protocol": "SCTP"}]), None),
    Case("service-backend", _set("spec.backend", {"service": {"name": "web", "port": "http"}}),
         None),
    Case("limits", _set("spec.connectionLimits", {"upper": 100, "lower": 50}), None),
    Case("health-http", _set("spec.healthCheck", {"http": {"path": "/healthz",
                                                           "statusCodes": [200, 204]}}), None),
    Case("same-port-two-protocols", _set("spec.ports", [{"port": 53, "protocol": "UDP"},
                                                        {"port": 53, "protocol": "TCP"}]), None),
]

INVALID = [
    Case("no-vip", _del("spec.vip"), "spec.vip"),
    Case("bad-vip", _set("spec.vip", "192.0.2.300"), "spec.vip"),
    Case("vip-hostname", _set("spec.vip", "example.com"), "spec.vip"),
    Case("vip-link-local", _set("spec.vip", "169.254.0.10"), "spec.vip"),
    Case("vip-multicast", _set("spec.vip", "ff02::1"), "spec.vip"),
    Case("scheduler-shorthand", _set("spec.scheduler", "rr"), "spec.scheduler"),
    Case("too-many-ports", _set("spec.ports", [{"port": p} for p in range(1, 66)]), "spec.ports"),
    Case("no-ports", _set("spec.ports", []), "spec.ports"),
    Case("port-zero", _set("spec.ports", [{"port": 0}]), "spec.ports[0].port"),
    Case("port-too-big", _set("spec.ports", [{"port": 70000}]), "spec.ports[0].port"),
    Case("port-string", _set("spec.ports", [{"port": "80"}]), "spec.ports[0].port"),
    Case("bad-protocol", _set("spec.ports", [{"port": 80, "protocol": "ICMP"}]),
         "spec.ports[0].protocol"),
    Case("duplicate-port", _set("spec.ports", [{"port": 80}, {"port": 80, "protocol": "TCP"}]),
         "spec.ports[1]"),
    Case("bad-forwarding", _set("spec.forwarding", "Gateway"), "spec.forwarding"),
    Case("dr-target-port", _set("spec.ports", [{"port": 80, "targetPort": 8080}]),
         "spec.ports[0].targetPort"),
    Case("tunnel-target-port", _all(TUNNEL, _set("spec.ports", [{"port": 80, "targetPort": 81}])),
         "spec.ports[0].targetPort"),
    Case("dr-remapped-address-port", _set("spec.backend.addresses", [{"ip": "10.0.0.1",
                                                                      "port": 8080}]),
         "spec.backend.addresses[0].port"),
    Case("tunnel-without-tunnel-mode", _set("spec.tunnel", {"type": "ipip"}), "spec.tunnel"),
    Case("bad-tunnel-type", _all(TUNNEL, _set("spec.tunnel", {"type": "vxlan"})),
         "spec.tunnel.type"),
    Case("gue-without-port", _all(TUNNEL, _set("spec.tunnel", {"type": "gue"})),
         "spec.tunnel.port"),
    Case("ipip-with-port", _all(TUNNEL, _set("spec.tunnel", {"type": "ipip", "port": 5555})),
         "spec.tunnel.port"),
    Case("ipip-checksum", _all(TUNNEL, _set("spec.tunnel", {"type": "ipip",
                                                            "checksum": "checksum"})),
         "spec.tunnel.checksum"),
    Case("unknown-scheduler", _set("spec.scheduler", {"name": "fastest"}), "spec.scheduler.name"),
    Case("flag-for-other-scheduler", _set("spec.scheduler", {"name": "rr",
                                                             "flags": ["sh-port"]}),
         "spec.scheduler.flags[0]"),
    Case("unknown-flag", _set("spec.scheduler", {"name": "sh", "flags": ["sh-fast"]}),
         "spec.scheduler.flags[0]"),
    Case("persistence-zero", _set("spec.persistence", {"timeoutSeconds": 0}),
         "spec.persistence.timeoutSeconds"),
    Case("bad-netmask", _set("spec.persistence", {"netmask": "255.0.255.0"}),
         "spec.persistence.netmask"),
    Case("one-packet-tcp", _set("spec.onePacket", True), "spec.onePacket"),
    Case("two-backends", _set("spec.backend", {"service": {"name": "web"},
                                               "addresses": [{"ip": "10.0.0.1"}]}),
         "spec.backend"),
    Case("no-backend", _set("spec.backend", {}), "spec.backend"),
    Case("bad-address", _set("spec.backend.addresses", [{"ip": "10.0.0.256"}]),
         "spec.backend.addresses[0].ip"),
    Case("mixed-family-dr", _set("spec.backend.addresses", [{"ip": "2001:db8::1"}]),
         "spec.backend.addresses[0].ip"),
    Case("weight-negative", _set("spec.backend.addresses", [{"ip": "10.0.0.1", "weight": -1}]),
         "spec.backend.addresses[0].weight"),
    Case("weight-too-big", _set("spec.weight", 70000), "spec.weight"),
    Case("lower-above-upper", _set("spec.connectionLimits", {"upper": 10, "lower": 20}),
         "spec.connectionLimits.lower"),
    Case("bad-interface", _set("spec.directors", {"interface": "a-very-long-interface-name"}),
         "spec.directors.interface"),
    Case("health-both", _set("spec.healthCheck", {"tcp": {}, "http": {}}), "spec.healthCheck"),
    Case("health-timeout-above-interval", _set("spec.healthCheck", {
        "tcp": {}, "intervalSeconds": 1, "timeoutSeconds": 5}), "spec.healthCheck.timeoutSeconds"),
    Case("unknown-field", _set("spec.vipAddress", "192.0.2.1"), "spec.vipAddress"),
]
