"""One table of VirtualServer specs, valid and invalid, shared by every validator.

`spec.parse` walks it in the unit tier (tests/unit/test_spec.py); the CRD (OpenAPI + CEL)
walks the same table against a real API server (tests/cluster/test_crd_agreement.py), so the
two validations cannot drift apart.

Each case: an id, a function that edits a valid base document, and the field path the
error must name (None for a valid document). An invalid case should have one thing wrong:
`spec` reports the first error it finds, the API server all of them. Where a CEL rule on a
list cannot point into it, its message starts with the full path (`spec.ports[1].targetPort:
...`), which the agreement test accepts as naming the field.
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
    # Only the required fields: everything else defaulted (the CRD's defaults and spec's agree).
    Case("minimal", _all(_del("spec.forwarding"), _del("spec.scheduler"),
                         _set("spec.ports", [{"port": 443}])), None),
    Case("tunnel-defaults", TUNNEL, None),
    Case("tunnel-mixed-family-v6-vip", _all(TUNNEL, _set("spec.vip", "2001:db8::10")), None),
    Case("ipv6-spellings", _all(_set("spec.vip", "2001:DB8::10"),
                                _set("spec.backend.addresses", [{"ip": "2001:db8:0:0::1"},
                                                                {"ip": "2001:db8::2"}])), None),
    Case("ipv6-persistence-prefix", _all(_set("spec.vip", "2001:db8::10"),
                                         _set("spec.backend.addresses", [{"ip": "2001:db8::1"}]),
                                         _set("spec.persistence", {"netmask": 64})), None),
    Case("persistence-longest", _set("spec.persistence", {"timeoutSeconds": 2678400,
                                                          "netmask": "255.255.255.255"}), None),
    Case("mh-flags", _set("spec.scheduler", {"name": "mh", "flags": ["mh-port", "mh-fallback"]}),
         None),
    Case("twos", _set("spec.scheduler", {"name": "twos"}), None),
    Case("every-scheduler-but-twos", _set("spec.scheduler", {"name": "ovf"}), None),
    Case("nat-address-port", _all(NAT, _set("spec.backend.addresses",
                                            [{"ip": "10.0.0.1", "port": 8080},
                                             {"ip": "10.0.0.1", "port": 8081}])), None),
    Case("nat-target-port-same-address-port", _all(
        NAT, _set("spec.ports", [{"port": 80, "targetPort": 8080}]),
        _set("spec.backend.addresses", [{"ip": "10.0.0.1", "port": 8080}])), None),
    Case("dr-address-port-is-virtual-port", _set("spec.backend.addresses",
                                                 [{"ip": "10.0.0.1", "port": 80}]), None),
    Case("nat-several-ports", _all(NAT, _set("spec.ports", [
        {"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8443},
        {"port": 53, "protocol": "UDP"}])), None),
    Case("most-ports", _set("spec.ports", [{"port": p} for p in range(1000, 1064)]), None),
    # 256 distinct addresses: the duplicate check (quadratic in CEL) stays within its budget.
    Case("most-addresses", _set("spec.backend.addresses",
                                [{"ip": f"10.1.{i // 100}.{i % 100 + 1}"} for i in range(256)]),
         None),
    Case("service-port-number", _set("spec.backend", {"service": {"name": "web-1", "port": 8080}}),
         None),
    Case("service-only-name", _set("spec.backend", {"service": {"name": "web"}}), None),
    Case("weights-zero", _all(_set("spec.weight", 0), _set("spec.backend.addresses",
                                                           [{"ip": "10.0.0.1", "weight": 0}])),
         None),
    Case("limits-upper-only", _set("spec.connectionLimits", {"upper": 2147483647}), None),
    Case("directors", _set("spec.directors", {
        "nodeSelector": {"lvs.dev/director": "true", "topology.kubernetes.io/zone": "eu-1a",
                         "edge": ""},
        "interface": "bond0.100"}), None),
    Case("health-tcp-all-fields", _set("spec.healthCheck", {
        "tcp": {}, "intervalSeconds": 3600, "timeoutSeconds": 3600, "failureThreshold": 100,
        "successThreshold": 100}), None),
    Case("health-http-defaults", _set("spec.healthCheck", {"http": {}}), None),
    Case("drain-immediate", _set("spec.drain", {"timeoutSeconds": 0}), None),
    # JSON has one number type: the API server takes 80.0 as the integer 80, and so does spec.
    Case("integral-float", _set("spec.ports", [{"port": 80.0}]), None),
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
    Case("no-spec", _del("spec"), "spec"),
    # Addresses: what CEL's isIP refuses, spec refuses too.
    Case("vip-number", _set("spec.vip", 3221225994), "spec.vip"),
    Case("vip-ipv4-mapped", _set("spec.vip", "::ffff:192.0.2.10"), "spec.vip"),
    Case("vip-zone", _all(_set("spec.vip", "2001:db8::10%eth0"),
                          _set("spec.backend.addresses", [{"ip": "2001:db8::1"}])), "spec.vip"),
    Case("vip-loopback", _set("spec.vip", "127.0.0.1"), "spec.vip"),
    Case("vip-unspecified", _all(_set("spec.vip", "::"),
                                 _set("spec.backend.addresses", [{"ip": "2001:db8::1"}])),
         "spec.vip"),
    Case("vip-broadcast", _set("spec.vip", "255.255.255.255"), "spec.vip"),
    Case("vip-leading-zero", _set("spec.vip", "192.0.2.010"), "spec.vip"),
    Case("address-link-local", _set("spec.backend.addresses", [{"ip": "10.0.0.1"},
                                                              {"ip": "169.254.1.1"}]),
         "spec.backend.addresses[1].ip"),
    Case("address-missing-ip", _set("spec.backend.addresses", [{"weight": 2}]),
         "spec.backend.addresses[0].ip"),
    Case("mixed-family-second", _all(_set("spec.vip", "2001:db8::10"), _set(
        "spec.backend.addresses", [{"ip": "2001:db8::1"}, {"ip": "2001:db8::2"},
                                   {"ip": "10.0.0.3"}])), "spec.backend.addresses[2].ip"),
    Case("mixed-family-nat", _all(NAT, _set("spec.backend.addresses", [{"ip": "2001:db8::1"}])),
         "spec.backend.addresses[0].ip"),
    # Ports.
    Case("duplicate-port-default-protocol", _set("spec.ports", [{"port": 53, "protocol": "TCP"},
                                                                {"port": 53}]), "spec.ports[1]"),
    Case("port-fraction", _set("spec.ports", [{"port": 80.5}]), "spec.ports[0].port"),
    Case("port-missing", _set("spec.ports", [{"protocol": "UDP"}]), "spec.ports[0].port"),
    Case("protocol-lowercase", _set("spec.ports", [{"port": 80, "protocol": "tcp"}]),
         "spec.ports[0].protocol"),
    Case("target-port-zero", _all(NAT, _set("spec.ports", [{"port": 80, "targetPort": 0}])),
         "spec.ports[0].targetPort"),
    Case("dr-second-target-port", _set("spec.ports", [{"port": 80}, {"port": 443,
                                                                     "targetPort": 8443}]),
         "spec.ports[1].targetPort"),
    Case("unknown-port-field", _set("spec.ports", [{"port": 80, "name": "http"}]),
         "spec.ports[0].name"),
    Case("ports-not-list", _set("spec.ports", {"port": 80}), "spec.ports"),
    # Port remapping: only NAT, and said once.
    Case("tunnel-remapped-address-port", _all(TUNNEL, _set("spec.backend.addresses",
                                                           [{"ip": "10.0.0.1", "port": 80},
                                                            {"ip": "10.0.0.2", "port": 81}])),
         "spec.backend.addresses[1].port"),
    Case("dr-address-port-two-ports", _all(
        _set("spec.ports", [{"port": 80}, {"port": 443}]),
        _set("spec.backend.addresses", [{"ip": "10.0.0.1", "port": 80}])),
         "spec.backend.addresses[0].port"),
    Case("nat-several-ports-address-port", _all(
        NAT, _set("spec.ports", [{"port": 80}, {"port": 443}]),
        _set("spec.backend.addresses", [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2", "port": 8443}])),
         "spec.backend.addresses[1].port"),
    Case("nat-target-port-and-address-port", _all(
        NAT, _set("spec.ports", [{"port": 80, "targetPort": 8080}]),
        _set("spec.backend.addresses", [{"ip": "10.0.0.1", "port": 9090}])),
         "spec.backend.addresses[0].port"),
    # Tunnel settings.
    Case("tunnel-on-nat", _all(NAT, _set("spec.tunnel", {"type": "gre"})), "spec.tunnel"),
    Case("gre-remote-checksum", _all(TUNNEL, _set("spec.tunnel", {"type": "gre",
                                                                   "checksum": "remote"})),
         "spec.tunnel.checksum"),
    Case("gre-with-port", _all(TUNNEL, _set("spec.tunnel", {"type": "gre", "port": 4754})),
         "spec.tunnel.port"),
    Case("gue-port-zero", _all(TUNNEL, _set("spec.tunnel", {"type": "gue", "port": 0})),
         "spec.tunnel.port"),
    Case("bad-checksum", _all(TUNNEL, _set("spec.tunnel", {"type": "gre", "checksum": "yes"})),
         "spec.tunnel.checksum"),
    Case("unknown-tunnel-field", _all(TUNNEL, _set("spec.tunnel", {"mtu": 1480})),
         "spec.tunnel.mtu"),
    # Scheduler.
    Case("mh-flag-on-sh", _set("spec.scheduler", {"name": "sh", "flags": ["mh-port"]}),
         "spec.scheduler.flags[0]"),
    Case("second-flag-wrong", _set("spec.scheduler", {"name": "sh",
                                                      "flags": ["sh-port", "mh-fallback"]}),
         "spec.scheduler.flags[1]"),
    Case("flag-on-default-scheduler", _set("spec.scheduler", {"flags": ["sh-port"]}),
         "spec.scheduler.flags[0]"),
    Case("duplicate-flag", _set("spec.scheduler", {"name": "sh",
                                                   "flags": ["sh-port", "sh-port"]}),
         "spec.scheduler.flags[1]"),
    Case("scheduler-upper-case", _set("spec.scheduler", {"name": "RR"}), "spec.scheduler.name"),
    # Persistence.
    Case("persistence-too-long", _set("spec.persistence", {"timeoutSeconds": 2678401}),
         "spec.persistence.timeoutSeconds"),
    Case("netmask-prefix-as-string", _set("spec.persistence", {"netmask": "24"}),
         "spec.persistence.netmask"),
    Case("netmask-hostmask", _set("spec.persistence", {"netmask": "0.0.0.255"}),
         "spec.persistence.netmask"),
    Case("netmask-all-zero", _set("spec.persistence", {"netmask": "0.0.0.0"}),
         "spec.persistence.netmask"),
    Case("netmask-prefix-zero", _set("spec.persistence", {"netmask": 0}),
         "spec.persistence.netmask"),
    Case("netmask-ipv4-33", _set("spec.persistence", {"netmask": 33}), "spec.persistence.netmask"),
    Case("netmask-dotted-for-ipv6", _all(_set("spec.vip", "2001:db8::10"),
                                         _set("spec.backend.addresses", [{"ip": "2001:db8::1"}]),
                                         _set("spec.persistence", {"netmask": "255.255.255.0"})),
         "spec.persistence.netmask"),
    Case("netmask-ipv6-129", _all(_set("spec.vip", "2001:db8::10"),
                                  _set("spec.backend.addresses", [{"ip": "2001:db8::1"}]),
                                  _set("spec.persistence", {"netmask": 129})),
         "spec.persistence.netmask"),
    Case("one-packet-mixed", _all(_set("spec.ports", [{"port": 53, "protocol": "UDP"},
                                                      {"port": 53, "protocol": "TCP"}]),
                                  _set("spec.onePacket", True)), "spec.onePacket"),
    Case("one-packet-string", _set("spec.onePacket", "true"), "spec.onePacket"),
    # Backend.
    Case("no-addresses", _set("spec.backend.addresses", []), "spec.backend.addresses"),
    Case("too-many-addresses", _set("spec.backend.addresses", [
        {"ip": f"10.1.{i // 100}.{i % 100 + 1}"} for i in range(257)]), "spec.backend.addresses"),
    Case("duplicate-address", _set("spec.backend.addresses", [
        {"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.1", "weight": 5}]),
         "spec.backend.addresses[2].ip"),
    Case("duplicate-address-ipv6-spelling", _all(
        _set("spec.vip", "2001:db8::10"),
        _set("spec.backend.addresses", [{"ip": "2001:db8::1"}, {"ip": "2001:DB8:0::1"}])),
         "spec.backend.addresses[1].ip"),
    Case("duplicate-address-and-port", _all(NAT, _set("spec.backend.addresses", [
        {"ip": "10.0.0.1", "port": 8080}, {"ip": "10.0.0.1", "port": 8080}])),
         "spec.backend.addresses[1].ip"),
    Case("service-bad-name", _set("spec.backend", {"service": {"name": "Web_1"}}),
         "spec.backend.service.name"),
    Case("service-no-name", _set("spec.backend", {"service": {"port": "http"}}),
         "spec.backend.service.name"),
    Case("service-port-zero", _set("spec.backend", {"service": {"name": "web", "port": 0}}),
         "spec.backend.service.port"),
    Case("service-port-bad-name", _set("spec.backend", {"service": {"name": "web",
                                                                    "port": "HTTP"}}),
         "spec.backend.service.port"),
    Case("address-weight-string", _set("spec.backend.addresses", [{"ip": "10.0.0.1",
                                                                   "weight": "3"}]),
         "spec.backend.addresses[0].weight"),
    # Limits, directors, health checks, drain.
    Case("lower-without-upper", _set("spec.connectionLimits", {"lower": 5}),
         "spec.connectionLimits.lower"),
    Case("upper-too-big", _set("spec.connectionLimits", {"upper": 2147483648}),
         "spec.connectionLimits.upper"),
    Case("interface-alias", _set("spec.directors", {"interface": "eth0:1"}),
         "spec.directors.interface"),
    Case("interface-dot", _set("spec.directors", {"interface": "."}), "spec.directors.interface"),
    Case("interface-space", _set("spec.directors", {"interface": "eth 0"}),
         "spec.directors.interface"),
    Case("interface-empty", _set("spec.directors", {"interface": ""}),
         "spec.directors.interface"),
    Case("node-selector-bad-key", _set("spec.directors", {"nodeSelector": {"lvs dev": "true"}}),
         "spec.directors.nodeSelector"),
    Case("node-selector-bad-value", _set("spec.directors", {"nodeSelector": {"role": "yes!"}}),
         "spec.directors.nodeSelector.role"),
    Case("health-neither", _set("spec.healthCheck", {"intervalSeconds": 5}), "spec.healthCheck"),
    Case("health-interval-zero", _set("spec.healthCheck", {"tcp": {}, "intervalSeconds": 0}),
         "spec.healthCheck.intervalSeconds"),
    Case("health-failure-threshold-zero", _set("spec.healthCheck", {"tcp": {},
                                                                    "failureThreshold": 0}),
         "spec.healthCheck.failureThreshold"),
    Case("health-tcp-port", _set("spec.healthCheck", {"tcp": {"port": 8080}}),
         "spec.healthCheck.tcp.port"),
    Case("health-path-relative", _set("spec.healthCheck", {"http": {"path": "healthz"}}),
         "spec.healthCheck.http.path"),
    Case("health-path-space", _set("spec.healthCheck", {"http": {"path": "/a b"}}),
         "spec.healthCheck.http.path"),
    Case("health-no-status-codes", _set("spec.healthCheck", {"http": {"statusCodes": []}}),
         "spec.healthCheck.http.statusCodes"),
    Case("health-status-code-600", _set("spec.healthCheck", {"http": {"statusCodes": [600]}}),
         "spec.healthCheck.http.statusCodes[0]"),
    Case("health-duplicate-status-code", _set("spec.healthCheck", {
        "http": {"statusCodes": [200, 204, 200]}}), "spec.healthCheck.http.statusCodes[2]"),
    Case("drain-negative", _set("spec.drain", {"timeoutSeconds": -1}),
         "spec.drain.timeoutSeconds"),
    Case("drain-too-long", _set("spec.drain", {"timeoutSeconds": 604801}),
         "spec.drain.timeoutSeconds"),
]
