"""The VRRP guard: an nftables table of our own that lets VRRP in from the peers only.

keepalived's `check_unicast_src` rejects adverts from non-peers, but while forgeries arrive
a backup still flaps to MASTER for 10-40 ms every 0.3-1 s; dropping them before keepalived
sees them removes the effect entirely (measured, notes/keepalived REPORT.md Q3). The table:

    table inet lvs_operator_vrrp {
        counter rejected { }
        chain input {
            type filter hook input priority -150; policy accept;
            iifname "eth0" ip protocol 112 ip saddr != { PEERS } counter name "rejected" drop
            iifname "eth0" meta nfproto ipv6 meta l4proto 112 counter name "rejected" drop
        }
    }

Peers are IPv4 (VRRP runs over IPv4 here), so every IPv6 VRRP packet is a non-peer's. The
chain's policy is accept and it matches protocol 112 only: nothing else on the node is
affected. Priority -150 runs it before the usual filter chains (0) and after conntrack.

The table is replaced in one `nft -f -` transaction (create it if missing, delete it, create
it again), so there is never a moment without a guard, and no other table is ever read or
touched. `nft` is the standard tool for this and a process per change is cheap (peers change
when directors join or leave); its counter is read at scrape time.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from lvs_operator.network.errors import NetworkError

TABLE = "lvs_operator_vrrp"
COUNTER = "rejected"
VRRP = 112  # IP protocol number
PRIORITY = -150
TIMEOUT = 30.0  # seconds; a loaded node under emulation starts nft in well under that


class GuardError(NetworkError):
    """The guard could not be installed, read or removed."""


def ruleset(interface: str, peers: Iterable[ipaddress.IPv4Address]) -> str:
    """Return the `nft -f` script that (re)creates the guard for `interface` and `peers`,
    as one transaction (an empty `peers` drops all VRRP on `interface`).

    Raises:
        ValueError: when `interface` is not a valid interface name.
    """
    _check_interface(interface)
    allowed = sorted(set(peers))
    source = f" ip saddr != {{ {', '.join(str(p) for p in allowed)} }}" if allowed else ""
    return "\n".join([
        # Declaring the table first makes the delete valid when it does not exist yet.
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        f"    counter {COUNTER} {{ }}",
        "    chain input {",
        f"        type filter hook input priority {PRIORITY}; policy accept;",
        f'        iifname "{interface}" ip protocol {VRRP}{source} counter name "{COUNTER}" drop',
        f'        iifname "{interface}" meta nfproto ipv6 meta l4proto {VRRP} '
        f'counter name "{COUNTER}" drop',
        "    }",
        "}",
        "",
    ])


def _check_interface(name: str) -> None:
    # Linux interface names: 1-15 bytes, no '/', no whitespace; a quote would break the
    # script, so names are checked rather than escaped.
    if not 0 < len(name.encode()) < 16 or any(c in name for c in '/"\\') \
            or any(c.isspace() for c in name):
        raise ValueError(f"VRRP interface {name!r} is not a valid interface name")


def parse_counter(text: str) -> int:
    """Return the packets of the guard's counter in `nft -j list counter ...` output.

    Raises:
        GuardError: when the output holds no such counter.
    """
    try:
        for item in json.loads(text)["nftables"]:
            counter = item.get("counter")
            if counter and counter.get("name") == COUNTER and counter.get("table") == TABLE:
                return int(counter["packets"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise GuardError(f"reading nft's counter {TABLE}/{COUNTER}: {e}") from None
    raise GuardError(f"nft listed no counter {COUNTER!r} in table inet {TABLE}")


@dataclass
class Guard:
    """The guard of this network namespace, driven through the `nft` command.

    Attributes:
        nft: the nft program.
    """

    nft: str = "nft"
    # Drops counted by tables this Guard replaced: a new table starts its counter at 0,
    # and what `rejected` reports must only grow (a Prometheus counter).
    _carried: int = field(default=0, init=False)

    def apply(self, interface: str, peers: Iterable[ipaddress.IPv4Address]) -> None:
        """Install or replace the guard (one atomic transaction).

        Raises:
            ValueError: when `interface` is not a valid interface name.
            GuardError: when nft is missing or refuses the ruleset (with what to do).
        """
        script = ruleset(interface, peers)
        with contextlib.suppress(GuardError):  # no table yet, or nft missing: said below
            self._carried += self._counter()
        self._run(["-f", "-"], what=f"installing the VRRP guard (table inet {TABLE})",
                  script=script)

    def remove(self) -> None:
        """Delete the guard's table; nothing happens when it is not there.

        Raises:
            GuardError: when nft is missing or fails.
        """
        self._run(["-f", "-"], what=f"removing the VRRP guard (table inet {TABLE})",
                  script=f"table inet {TABLE}\ndelete table inet {TABLE}\n")

    def rejected(self) -> int:
        """Return how many VRRP packets the guard has dropped since this Guard first
        installed it.

        Raises:
            GuardError: when nft fails or the table is not there.
        """
        return self._carried + self._counter()

    def _counter(self) -> int:
        out = self._run(["-j", "list", "counter", "inet", TABLE, COUNTER],
                        what=f"reading the VRRP guard's counter (table inet {TABLE})")
        return parse_counter(out)

    def _run(self, args: list[str], *, what: str, script: str | None = None) -> str:
        try:
            proc = subprocess.run([self.nft, *args], input=script, capture_output=True,
                                  text=True, timeout=TIMEOUT, check=False)
        except FileNotFoundError:
            raise GuardError(
                f"{what}: the nft program ({self.nft!r}) is not installed: install nftables "
                "in the image, or set LVS_VRRP_GUARD=false to run without the guard "
                "(keepalived then sees forged adverts from non-peers)") from None
        except (OSError, subprocess.TimeoutExpired) as e:
            raise GuardError(f"{what}: running {self.nft}: {e}") from None
        if proc.returncode != 0:
            hint = ("; nft needs CAP_NET_ADMIN in this network namespace"
                    if "Operation not permitted" in proc.stderr else "")
            raise GuardError(f"{what}: nft exited {proc.returncode}: "
                             f"{proc.stderr.strip()}{hint}")
        return proc.stdout
