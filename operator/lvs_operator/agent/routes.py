"""The interface of the node's default route: where VIPs go when nothing else is said.

spec.directors.interface defaults to it (see the CRD). Read from /proc/net/route and
/proc/net/ipv6_route, which show the calling thread's network namespace; parsing is pure.
(This reads the kernel and belongs with `lvs_operator.network` once that grows a route
lookup; it is here for now so the agent can do without one.)
"""

from __future__ import annotations

from pathlib import Path

PROC_NET = Path("/proc/net")
_UP = 0x1  # RTF_UP
_REJECT = 0x200  # RTF_REJECT (an "unreachable" default)


def parse_ipv4(text: str) -> str | None:
    """Return the interface of the lowest-metric IPv4 default route in `text` (the
    contents of /proc/net/route), or None."""
    best: tuple[int, str] | None = None
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, destination, flags, metric, mask = (fields[0], fields[1], int(fields[3], 16),
                                                   int(fields[6]), fields[7])
        if destination == mask == "00000000" and flags & _UP and not flags & _REJECT:
            best = min(best, (metric, iface)) if best else (metric, iface)
    return best[1] if best else None


def parse_ipv6(text: str) -> str | None:
    """Return the interface of the lowest-metric IPv6 default route in `text` (the
    contents of /proc/net/ipv6_route), or None."""
    best: tuple[int, str] | None = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 10:
            continue
        destination, prefix, metric, flags, iface = (fields[0], fields[1], int(fields[5], 16),
                                                     int(fields[8], 16), fields[9])
        if (int(destination, 16) == 0 and prefix == "00" and flags & _UP
                and not flags & _REJECT and iface != "lo"):
            best = min(best, (metric, iface)) if best else (metric, iface)
    return best[1] if best else None


def default_interface(proc_net: Path = PROC_NET) -> str | None:
    """Return the interface of the IPv4 default route, else of the IPv6 one, else None."""
    for name, parse in (("route", parse_ipv4), ("ipv6_route", parse_ipv6)):
        try:
            found = parse((proc_net / name).read_text())
        except OSError:
            continue  # no IPv6 in this kernel, or no /proc: no route of that family
        if found:
            return found
    return None
