"""Render an IPVS table for people (like `ipvsadm -L -n`) and for programs (JSON)."""

from __future__ import annotations

from typing import Any

from lvs_operator.model import (
    Forwarding,
    RealServer,
    SchedulerFlag,
    ServiceKey,
    Stats,
    Table,
    VirtualService,
    format_endpoint,
)

# ipvsadm's words for the forwarding methods.
FORWARD_NAMES = {Forwarding.DIRECT_ROUTING: "Route", Forwarding.TUNNEL: "Tunnel",
                 Forwarding.NAT: "Masq"}
COUNTER_HEADERS = ("Conns", "InPkts", "OutPkts", "InBytes", "OutBytes")
RATE_HEADERS = ("CPS", "InPPS", "OutPPS", "InBPS", "OutBPS")


def format_table(services: Table, *, stats: bool = False, rate: bool = False) -> str:
    """Return `services` as text in the layout of `ipvsadm -L -n` (`--stats`, `--rate`)."""
    lines = ["Prot LocalAddress:Port Scheduler Flags"]
    if stats or rate:
        headers = COUNTER_HEADERS if stats else RATE_HEADERS
        lines[0] = f"{'Prot LocalAddress:Port':<34}" + "".join(f"{h:>10}" for h in headers)
        lines.append(f"{'  -> RemoteAddress:Port':<34}")
    else:
        lines.append(f"{'  -> RemoteAddress:Port':<34}Forward Weight ActiveConn InActConn")
    for key in sorted(services, key=ServiceKey.sort_key):
        service = services[key]
        reals = sorted(service.reals.values(), key=RealServer.sort_key)
        if stats or rate:
            lines.append(f"{_service_label(key):<34}" + _numbers(service.stats, rate=rate))
            lines.extend(f"{'  -> ' + str(real):<34}" + _numbers(real.stats, rate=rate)
                         for real in reals)
            continue
        lines.append(f"{_service_label(key)} {service.scheduler}{_service_flags(service)}")
        lines.extend(
            f"{'  -> ' + str(real):<34}{FORWARD_NAMES[real.forwarding]:<8}{real.weight:<7}"
            f"{real.active_conns:<11}{real.inactive_conns}"
            for real in reals
        )
    return "\n".join(lines)


def _service_label(key: ServiceKey) -> str:
    if key.fwmark:
        return f"FWM  {key.fwmark} IPv{key.family}"
    assert key.protocol is not None and key.address is not None
    return f"{key.protocol.name:<4} {format_endpoint(key.address, key.port)}"


def _service_flags(service: VirtualService) -> str:
    parts = []
    if service.persistence is not None:
        parts.append(f"persistent {service.persistence.timeout}")
        if service.persistence.prefix != (32 if service.key.family == 4 else 128):
            parts.append(f"mask /{service.persistence.prefix}")
    if service.one_packet:
        parts.append("ops")
    names = {SchedulerFlag.FALLBACK: "fallback", SchedulerFlag.PORT: "port",
             SchedulerFlag.FLAG3: "flag-3"}
    parts.extend(f"{service.scheduler}-{names[f]}" if f is not SchedulerFlag.FLAG3 else names[f]
                 for f in sorted(service.flags, key=lambda f: f.value))
    return "".join(f" {p}" for p in parts)


def _numbers(stats: Stats | None, *, rate: bool) -> str:
    stats = stats or Stats()
    values = (
        (stats.cps, stats.in_pps, stats.out_pps, stats.in_bps, stats.out_bps) if rate
        else (stats.conns, stats.in_packets, stats.out_packets, stats.in_bytes, stats.out_bytes)
    )
    return "".join(f"{v:>10}" for v in values)


def table_to_json(services: Table) -> list[dict[str, Any]]:
    """Return `services` as JSON-ready dicts (key fields, attributes, counters and stats)."""
    return [_service_json(services[key]) for key in sorted(services, key=ServiceKey.sort_key)]


def _service_json(service: VirtualService) -> dict[str, Any]:
    key = service.key
    data: dict[str, Any] = {"family": f"IPv{key.family}"}
    if key.fwmark:
        data["fwmark"] = key.fwmark
    else:
        assert key.protocol is not None
        data.update(protocol=key.protocol.name, address=str(key.address), port=key.port)
    data.update(
        scheduler=service.scheduler,
        flags=sorted(f.name.lower() for f in service.flags),
        persistence=None if service.persistence is None else {
            "timeoutSeconds": service.persistence.timeout,
            "prefixLength": service.persistence.prefix,
        },
        onePacket=service.one_packet,
        stats=_stats_json(service.stats),
        realServers=[
            _real_json(r) for r in sorted(service.reals.values(), key=RealServer.sort_key)
        ],
    )
    return data


def _real_json(real: RealServer) -> dict[str, Any]:
    data: dict[str, Any] = {
        "address": str(real.address),
        "port": real.port,
        "forwarding": FORWARD_NAMES[real.forwarding],
        "weight": real.weight,
        "upperThreshold": real.upper_threshold,
        "lowerThreshold": real.lower_threshold,
        "activeConns": real.active_conns,
        "inactiveConns": real.inactive_conns,
        "persistentConns": real.persistent_conns,
        "stats": _stats_json(real.stats),
    }
    if real.tunnel is not None:
        data["tunnel"] = {"type": real.tunnel.type.name.lower(), "port": real.tunnel.port,
                          "checksum": real.tunnel.checksum.name.lower()}
    return data


def _stats_json(stats: Stats | None) -> dict[str, int]:
    stats = stats or Stats()
    return {
        "conns": stats.conns, "inPackets": stats.in_packets, "outPackets": stats.out_packets,
        "inBytes": stats.in_bytes, "outBytes": stats.out_bytes, "cps": stats.cps,
        "inPPS": stats.in_pps, "outPPS": stats.out_pps, "inBPS": stats.in_bps,
        "outBPS": stats.out_bps,
    }
