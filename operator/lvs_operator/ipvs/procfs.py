"""`/proc/net/ip_vs` as a cheap witness of the IPVS table. Pure: text in, text out.

The kernel prints its whole IPVS table there in one read (`ip_vs_info_seq_show` in
net/netfilter/ipvs/ip_vs_ctl.c), which costs a fraction of the generic-netlink dump (one
GET_DEST request per service). It shows most of what the model holds -- protocol, VIP and
port (or firewall mark), scheduler, one-packet scheduling (IPv4 and firewall-mark services),
the persistence netmask, and per real server its address, port, forwarding method and
weight -- but not scheduler flags, connection thresholds, tunnel encapsulation, the
persistence timeout (printed in jiffies, seconds x the kernel's HZ, which userspace cannot
read), nor one-packet scheduling of an IPv6 service. So it can confirm that a table *still*
is what a thorough netlink check found it to be, and that is all `KernelIPVS` uses it for
(see `KernelIPVS(verify_seconds=...)`).

A kernel quirk makes the file incomplete when *another* network namespace holds IPVS
services: the services of all namespaces share one hash table, the file's iterator counts
the others' entries when it steps forward but not when a read resumes at a position, so each
read after the first (the file comes in pages) skips entries (seen on 6.1: 1,008 of 2,000
services shown while another namespace held 2,000). A short file never confirms a table --
the expected services are missing -- so the caller just falls back to netlink there.

Both sides are reduced to the same *signature*: a mapping from each service line, with its
whitespace normalised, to the sorted real-server lines without their connection counters.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

from lvs_operator.model import Forwarding, VirtualService

Signature = dict[str, tuple[str, ...]]

_FORWARDING = {Forwarding.NAT: "Masq", Forwarding.TUNNEL: "Tunnel",
               Forwarding.DIRECT_ROUTING: "Route"}
_HEADER_LINES = 3  # version, and the two column headings


def signature(services: Iterable[VirtualService]) -> Signature | None:
    """Return the signature that `/proc/net/ip_vs` shows for a table holding `services`.

    Returns None when the text could not tell two of the services apart: firewall-mark
    service lines do not show the address family, so two with the same mark (one per
    family) could be swapped unnoticed.
    """
    result: Signature = {}
    marks: set[int] = set()
    for service in services:
        key = service.key
        if key.address is None or key.protocol is None:
            if key.fwmark in marks:
                return None
            marks.add(key.fwmark)
            head = f"FWM {key.fwmark:08X} {service.scheduler}"
            ops = service.one_packet
        elif key.address.version == 4:
            head = f"{key.protocol.name} {int(key.address):08X}:{key.port:04X} {service.scheduler}"
            ops = service.one_packet
        else:
            head = (f"{key.protocol.name} [{key.address.exploded}]:{key.port:04X} "
                    f"{service.scheduler}")
            ops = False  # IPv6 service lines never show it
        if ops:
            head += " ops"
        if service.persistence is not None:
            prefix = service.persistence.prefix
            # IPv4: the netmask itself; IPv6: the prefix length, which the kernel keeps in
            # host order and still prints through ntohl().
            mask = ((0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF if key.family == 4
                    else socket.ntohl(prefix))
            head += f" persistent {mask:08X}"
        if head in result:
            return None
        reals = []
        for real in service.reals.values():
            address = real.address
            where = (f"{int(address):08X}" if address.version == 4
                     else f"[{address.exploded}]")
            reals.append(f"-> {where}:{real.port:04X} {_FORWARDING[real.forwarding]} "
                         f"{real.weight}")
        result[head] = tuple(sorted(reals))
    return result


def parse(text: str) -> Signature | None:
    """Return the signature of the table printed in `text` (`/proc/net/ip_vs`).

    Returns None when the text does not have the expected shape (another kernel's format):
    the caller then trusts netlink alone.
    """
    lines = text.split("\n")
    if not lines[0].startswith("IP Virtual Server version"):
        return None
    result: dict[str, list[str]] = {}
    reals: list[str] | None = None
    for line in lines[_HEADER_LINES:]:
        if not line:
            continue
        if line.startswith("  -> "):
            fields = line.split()
            if reals is None or len(fields) != 6:
                return None
            # Counters (ActiveConn, InActConn) change with traffic: not part of the signature.
            reals.append(" ".join(fields[:4]))
        else:
            fields = line.split()
            if len(fields) > 3 and fields[-3] == "persistent":
                # The timeout is printed in jiffies (seconds x the kernel's HZ): left out.
                del fields[-2]
            reals = []
            result[" ".join(fields)] = reals
    return {head: tuple(sorted(found)) for head, found in result.items()}
