"""The network side of the kernel boundary: VIPs, announcements, sysctls, interface settings.

Everything acts on the network namespace of the calling thread. Functions take and return
strings, `ipaddress` objects and this package's own dataclasses; pyroute2 (used only to
marshal netlink messages, see `_netlink`) never leaks out. They block: from asyncio code,
call them through `asyncio.to_thread`.

This file imports nothing on purpose: pyroute2 (behind `vip`, `links`, `inetconf`) costs
most of a second to import, and `lvs-operator ipvs apply` must not pay that when it only
touches IPVS and sysctls. Import the module you need.

- `vip`: add / remove / list VIPs (/32, /128; IPv6 with nodad) on an interface, idempotently;
  give them a finite lifetime.
- `announce`: gratuitous ARP and unsolicited neighbour advertisements.
- `sysctl`: /proc/sys reads and writes; the director's IPVS sysctls.
- `inetconf`: per-interface IPv4 settings (arp_ignore, arp_announce, rp_filter) through
  netlink, which works with a read-only /proc/sys and CAP_NET_ADMIN alone.
- `links`: list interfaces, bring one up, create a tunnel device.
- `nftables`: the VRRP guard, an nftables table of our own (through the `nft` program) that
  lets VRRP in from the peers only.
"""
