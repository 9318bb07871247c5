"""`KernelVipHolder`: the kernel side of `syncer.VipHolder` for this network namespace."""

from __future__ import annotations

import time

from lvs_operator.model import IPAddress
from lvs_operator.network import vip
from lvs_operator.network.announce import announce


class KernelVipHolder:
    """Holds VIPs on real interfaces and announces them.

    Announcements go out in `rounds` rounds, `interval` seconds apart, each round covering
    every address once: a lost frame is covered by the next round, and announcing many
    VIPs costs (rounds - 1) x interval, not that per VIP.
    """

    def __init__(self, *, rounds: int = 3, interval: float = 0.2) -> None:
        self.rounds = rounds
        self.interval = interval

    def list_vips(self, interface: str) -> list[IPAddress]:
        """Return the host addresses (/32, /128) held on `interface`."""
        return vip.list_vips(interface)

    def add_vip(self, interface: str, address: IPAddress) -> bool:
        """Add `address` to `interface`; return False when it was already there."""
        return vip.add_vip(interface, address)

    def remove_vip(self, interface: str, address: IPAddress) -> bool:
        """Remove `address` from `interface`; return False when it was not there."""
        return vip.remove_vip(interface, address)

    def announce(self, interface: str, addresses: list[IPAddress]) -> None:
        """Send gratuitous ARP / unsolicited NA for `addresses` from `interface`."""
        for round_ in range(self.rounds):
            if round_:
                time.sleep(self.interval)
            for address in addresses:
                announce(interface, address, count=1)
