"""A VirtualServer's backend -> the real servers every director must program.

Pure: the inputs are a parsed `spec.VirtualServer`, its backend Service and that Service's
EndpointSlices as plain dicts (what the API server returns), the output is the content of
`status.realServers` plus a reason. The controller calls it on every relevant change; the
agents read the result back with `RealServerStatus.from_json` and `endpoint()`.

How EndpointSlice conditions map to IPVS (the same reading as kube-proxy's):
- `ready` (nil means true): the real server gets the VirtualServer's weight;
- `serving` and `terminating`: weight 0, so established connections finish while new ones go
  elsewhere (graceful drain) -- unless no endpoint is ready at all, in which case the
  terminating-but-serving ones keep their weight (kube-proxy's fallback: better a pod that
  is shutting down than no answer);
- neither ready nor terminating (a pod starting, or failing its readiness probe): listed
  with weight 0 and `ready: false`, so it counts in `status.ready` and gets its weight back
  without a remove and re-add;
- terminating and not serving: left out; the directors drain it.

Ports: `spec.backend.service.port` names a Service port (by name or number); each
EndpointSlice says which port number that is on its endpoints. NAT delivers to that port.
DirectRouting and Tunnel cannot remap ports, so an endpoint whose port is not a virtual port
is left out (and said so); the published port is then the virtual port itself, or omitted
when there are several virtual ports (each is delivered to the same port on the real server).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lvs_operator.api import spec
from lvs_operator.api.conditions import (
    NO_READY_ENDPOINTS,
    PORT_MISMATCH,
    PORT_NOT_FOUND,
    RESOLVED,
    SERVICE_NOT_FOUND,
)
from lvs_operator.api.realservers import RealServerStatus
from lvs_operator.model import Forwarding, IPAddress

SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # how an EndpointSlice names its Service
MODE_NAMES = {forwarding: name for name, forwarding in spec.FORWARDING.items()}



@dataclass(frozen=True)
class Resolution:
    """The real servers of a VirtualServer and why there are (or are not) any.

    `reason` is RESOLVED when at least one real server is ready (or static); otherwise it
    says what is missing, and `message` says it for a person.
    """

    real_servers: tuple[RealServerStatus, ...]
    reason: str
    message: str

    @property
    def resolved(self) -> bool:
        """Return whether there is something ready to send traffic to."""
        return self.reason == RESOLVED


def service_of(slice_: Mapping[str, Any]) -> str | None:
    """Return the name of the Service an EndpointSlice belongs to, or None."""
    labels = (slice_.get("metadata") or {}).get("labels") or {}
    name = labels.get(SERVICE_NAME_LABEL)
    return name if isinstance(name, str) and name else None


def resolve(vs: spec.VirtualServer, service: Mapping[str, Any] | None,
            slices: Iterable[Mapping[str, Any]]) -> Resolution:
    """Return the real servers of `vs`.

    `service` is the Service `spec.backend.service` names (None if it does not exist) and
    `slices` are its EndpointSlices; both are ignored for static addresses. The result is
    sorted by address and port, so equal inputs give equal statuses.
    """
    if not isinstance(vs.backend, spec.ServiceBackend):
        reals = tuple(sorted(
            (RealServerStatus(ip=e.address, port=e.port, ready=True,
                              weight=vs.weight if e.weight is None else e.weight)
             for e in vs.backend), key=RealServerStatus.sort_key))
        return Resolution(reals, RESOLVED, _count(len(reals), "static address"))
    backend = vs.backend
    where = f"Service {vs.namespace}/{backend.name}"
    if service is None:
        return Resolution((), SERVICE_NOT_FOUND, f"{where} does not exist: create it or fix "
                          "spec.backend.service.name")
    port_name, problem = _service_port(vs, service)
    if problem:
        return Resolution((), PORT_NOT_FOUND, f"{where} {problem}")
    found = _Endpoints(vs)
    for slice_ in slices:
        found.add_slice(slice_, port_name)
    return found.resolution(where)


class _State(enum.IntEnum):
    """An endpoint's condition; a higher value wins when one address appears twice."""

    NOT_READY = 1  # not ready and not terminating: listed at weight 0
    DRAINING = 2  # terminating but still serving: weight 0 (or the fallback weight)
    READY = 3


@dataclass(frozen=True)
class _Found:
    state: _State
    node: str | None
    pod: str | None


_ALL_PORTS = "*"  # the Service has no ports (a headless selector): every endpoint, any port


def _service_port(vs: spec.VirtualServer,
                  service: Mapping[str, Any]) -> tuple[str, str | None]:
    """Return the name of the chosen Service port ("" if unnamed), or _ALL_PORTS; or a
    problem (the end of a sentence about the Service) when there is no single such port."""
    assert isinstance(vs.backend, spec.ServiceBackend)
    ports: Sequence[Mapping[str, Any]] = (service.get("spec") or {}).get("ports") or []
    wanted = vs.backend.port
    names = ", ".join(str(p.get("name") or p.get("port")) for p in ports)
    if wanted is None:
        if not ports:
            return _ALL_PORTS, None
        if len(ports) == 1:
            return str(ports[0].get("name") or ""), None
        return "", (f"has {len(ports)} ports ({names}): set spec.backend.service.port to "
                    "the one to use")
    if isinstance(wanted, str):
        matches = [p for p in ports if p.get("name") == wanted]
    else:
        # Two Service ports may share a number (53/TCP and 53/UDP): prefer the protocol the
        # VirtualServer balances.
        protocols = {p.protocol.name for p in vs.ports}
        matches = sorted((p for p in ports if p.get("port") == wanted),
                         key=lambda p: p.get("protocol", "TCP") not in protocols)
    if not matches:
        return "", (f"has no port {wanted!r} (its ports: {names or 'none'}): fix "
                    "spec.backend.service.port")
    return str(matches[0].get("name") or ""), None


class _Endpoints:
    """Collects the endpoints of a Service's slices, then builds the Resolution."""

    def __init__(self, vs: spec.VirtualServer) -> None:
        self.vs = vs
        self.virtual_ports = {p.port for p in vs.ports}
        self.found: dict[tuple[IPAddress, int | None], _Found] = {}
        self.other_family = 0  # endpoints left out: not of the VIP's address family
        self.wrong_port: set[int] = set()  # DR/Tunnel endpoint ports that are not virtual

    def add_slice(self, slice_: Mapping[str, Any], port_name: str) -> None:
        if slice_.get("addressType") not in ("IPv4", "IPv6"):
            return  # FQDN endpoints cannot be IPVS real servers
        carried, port = _slice_port(slice_, port_name)
        if not carried:
            return  # this slice's endpoints do not have the chosen port
        for endpoint in slice_.get("endpoints") or []:
            self._add_endpoint(endpoint, port)

    def _add_endpoint(self, endpoint: Mapping[str, Any], port: int | None) -> None:
        addresses = endpoint.get("addresses") or []
        try:
            # Only the first address has a meaning (the EndpointSlice API says so).
            address = ipaddress.ip_address(addresses[0])
        except (IndexError, ValueError):
            return
        if address.version != self.vs.vip.version and \
                self.vs.forwarding is not Forwarding.TUNNEL:
            self.other_family += 1
            return
        state = _state(endpoint.get("conditions") or {})
        if state is None:
            return  # terminating and no longer serving: the directors drain it
        if self.vs.forwarding is not Forwarding.NAT and port is not None:
            if port not in self.virtual_ports:
                self.wrong_port.add(port)
                return
            # The real server receives each virtual port on itself: name the port only when
            # there is one, else leave it to the virtual port ("None" in spec.Endpoint).
            port = port if len(self.virtual_ports) == 1 else None
        ref = endpoint.get("targetRef") or {}
        found = _Found(state, endpoint.get("nodeName"),
                       ref.get("name") if ref.get("kind") == "Pod" else None)
        key = (address, port)
        # The same address may be listed by two slices while the EndpointSlice controller
        # moves it: the best state wins.
        if key not in self.found or self.found[key].state < state:
            self.found[key] = found

    def resolution(self, where: str) -> Resolution:
        states = [f.state for f in self.found.values()]
        ready = states.count(_State.READY)
        draining = states.count(_State.DRAINING)
        # kube-proxy's fallback: with nothing ready, terminating pods that still serve keep
        # taking traffic rather than none at all.
        fallback = ready == 0
        weights = {_State.READY: self.vs.weight, _State.NOT_READY: 0,
                   _State.DRAINING: self.vs.weight if fallback else 0}
        reals = tuple(sorted(
            (RealServerStatus(ip=address, port=port, weight=weights[f.state],
                              ready=f.state is _State.READY, node=f.node, pod=f.pod)
             for (address, port), f in self.found.items()),
            key=RealServerStatus.sort_key))
        left_out = self._left_out()
        if ready:
            message = f"{ready} of {_count(len(reals), 'endpoint')} of {where} ready"
            return Resolution(reals, RESOLVED, message + (f" ({left_out})" if left_out else ""))
        if not reals and self.wrong_port:
            mode = MODE_NAMES[self.vs.forwarding]
            ports = ", ".join(str(p) for p in sorted(self.wrong_port))
            virtual = ", ".join(str(p) for p in sorted(self.virtual_ports))
            return Resolution((), PORT_MISMATCH, (
                f"the endpoints of {where} listen on port {ports}, but {mode} cannot remap "
                f"the virtual port {virtual}: make the pods listen on the virtual port "
                "(the Service's targetPort) or use forwarding: NAT"))
        if not reals:
            message = f"{where} has no endpoints"
        else:
            message = (f"none of the {_count(len(reals), 'endpoint')} of {where} is ready "
                       f"({len(reals) - draining} not ready, {draining} terminating)")
            if draining:
                message += "; the terminating ones keep serving until they go"
        return Resolution(reals, NO_READY_ENDPOINTS,
                          message + (f" ({left_out})" if left_out else ""))

    def _left_out(self) -> str:
        parts = []
        if self.other_family:
            parts.append(f"{_count(self.other_family, 'endpoint')} of the other address "
                         "family left out: only forwarding: Tunnel mixes IPv4 and IPv6")
        if self.wrong_port and self.found:
            parts.append(f"endpoints on port {', '.join(map(str, sorted(self.wrong_port)))} "
                         f"left out: {MODE_NAMES[self.vs.forwarding]} cannot "
                         "remap ports")
        return "; ".join(parts)


def _slice_port(slice_: Mapping[str, Any], port_name: str) -> tuple[bool, int | None]:
    """Return whether the slice carries the chosen Service port, and its number there
    (None: unspecified, any port)."""
    if port_name == _ALL_PORTS:
        return True, None
    for entry in slice_.get("ports") or []:
        if (entry.get("name") or "") == port_name:
            number = entry.get("port")
            return True, number if isinstance(number, int) else None
    return False, None


def _state(conditions: Mapping[str, Any]) -> _State | None:
    """Return the state EndpointSlice `conditions` describe; None for an endpoint that is
    terminating and no longer serving (it is left out)."""
    ready = conditions.get("ready") is not False  # nil means ready
    serving = conditions.get("serving")
    serving = ready if serving is None else bool(serving)  # nil defers to ready
    terminating = conditions.get("terminating") is True  # nil means not terminating
    if ready:
        return _State.READY
    if terminating:
        return _State.DRAINING if serving else None
    return _State.NOT_READY


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 'es' if noun.endswith('ss') else 's'}"
