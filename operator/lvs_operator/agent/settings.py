"""The agent's settings: one dataclass per concern, read from the environment.

The DaemonSet (Helm values) sets environment variables; `lvs-operator agent` flags override
the most common ones. Every variable is optional except the node name:

| variable                               | flag                | default                   |
|----------------------------------------|---------------------|---------------------------|
| NODE_NAME                              | --node              | (required)                |
| KUBECONFIG                             | --kubeconfig        | in-cluster config         |
| LVS_STATE_FILE                         | --state-file        | /var/lib/lvs-operator/owned.json |
| LVS_INTERFACE                          | --interface         | the default route's       |
| LVS_METRICS_ADDRESS                    | --metrics-address   | 0.0.0.0:9640 ("" = off)   |
| LVS_RESYNC_SECONDS                     |                     | 30                        |
| LVS_MIN_SYNC_INTERVAL_SECONDS          |                     | 0.05                      |
| LVS_DRAIN_POLL_SECONDS                 |                     | 2                         |
| LVS_RETRY_SECONDS                      |                     | 5                         |
| LVS_MANAGE_SYSCTLS                     |                     | true                      |
| LVS_SYSCTL_CONNTRACK                   |                     | 1                         |
| LVS_SYSCTL_EXPIRE_NODEST_CONN          |                     | 1                         |
| LVS_SYSCTL_EXPIRE_QUIESCENT_TEMPLATE   |                     | 1                         |
| LVS_SYSCTL_CONN_REUSE_MODE             |                     | 1                         |
| LVS_TIMEOUT_TCP, LVS_TIMEOUT_TCP_FIN, LVS_TIMEOUT_UDP |      | 0 (keep the kernel's)     |
| LVS_HA                                 |                     | true                      |
| LVS_NAMESPACE                          | --namespace         | $POD_NAMESPACE, else lvs-system |
| LVS_LEASE_DURATION_SECONDS             | --lease-duration    | 0.8                       |
| LVS_LEASE_RENEW_SECONDS                |                     | 0.2 (duration / 4)        |
| LVS_LEASE_RENEW_DEADLINE_SECONDS       |                     | 0.6 (duration x 3/4)      |
| LVS_LEASE_SETTLE_SECONDS               |                     | 5                         |
| LVS_ANNOUNCE_SECONDS                   |                     | 10 (0 = only at takeover) |
| LVS_SYNC_ID                            |                     | 0 (backup: accept any)    |
| LVS_SYNC_INTERFACE                     | --sync-interface    | the VIP interface in use  |
| LVS_HA_ENGINE                          | --ha-engine         | keepalived (or lease)     |
| LVS_VRRP_INTERFACE                     | --vrrp-interface    | LVS_INTERFACE, else route |
| LVS_VRRP_ADDRESS                       |                     | the interface's first IPv4 |
| LVS_VRRP_ADVERT_SECONDS                |                     | 0.1                       |
| LVS_VRRP_PREEMPT_DELAY_SECONDS         |                     | 5                         |
| LVS_VRRP_VRIDS                         |                     | 1-255                     |
| LVS_VRRP_GARP_REFRESH_SECONDS          |                     | 1                         |
| LVS_VIP_LIFETIME_SECONDS               |                     | 2 (0 = no watchdog)       |
| LVS_KEEPALIVED_DIR                     | --keepalived-dir    | /run/lvs-operator/keepalived |
| LVS_KEEPALIVED_BINARY                  |                     | keepalived                |

With LVS_HA_ENGINE=keepalived (the default) the Lease is membership only: its defaults become
a duration of 60 s and a renewal every 10 s (kubelet renews its node Lease every 10 s).

Why each default is what it is: see the fields below and `DirectorSysctls`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lvs_operator import vrrp
from lvs_operator.model import Timeouts
from lvs_operator.network.sysctl import DirectorSysctls
from lvs_operator.ownership import DEFAULT_STATE_FILE

DEFAULT_METRICS_ADDRESS = "0.0.0.0:9640"
DEFAULT_NAMESPACE = "lvs-system"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class SettingsError(ValueError):
    """A setting has a value the agent cannot use; the message names the variable."""


@dataclass(frozen=True)
class SyncSettings:
    """When the agent converges the kernel.

    Attributes:
        resync_seconds: period of the full resync, which repairs drift nobody told us about
            (an `ipvsadm -C`, a missed event) and re-applies the director settings. 30 s as
            kube-proxy's IPVS mode; a no-op resync is one dump and a diff.
        min_interval_seconds: shortest gap between two syncs, so a burst of events (a
            rollout touches many objects) coalesces into one sync. Small next to the 300 ms
            change-latency target.
        drain_poll_seconds: while real servers drain, how often their connection counters are
            re-read so an idle one is deleted soon after its last connection ends.
        retry_seconds: after a failed sync or status write, retry this soon rather than at the
            next full resync.
    """

    resync_seconds: float = 30.0
    min_interval_seconds: float = 0.05
    drain_poll_seconds: float = 2.0
    retry_seconds: float = 5.0


@dataclass(frozen=True)
class WatchSettings:
    """How the agent watches the API server.

    Attributes:
        timeout_seconds: the server ends each watch after this long (the agent then watches
            again from the last resourceVersion); client-go picks 5 to 10 minutes.
        read_timeout_seconds: a watch that sends nothing (not even a bookmark, which the API
            server sends about every minute) for this long is presumed dead and restarted.
        backoff_max_seconds: longest wait between retries while the API server is unreachable.
    """

    timeout_seconds: int = 300
    read_timeout_seconds: float = 120.0
    backoff_max_seconds: float = 30.0


@dataclass(frozen=True)
class DirectorSettings:
    """The node-wide kernel settings the agent keeps, at start and on every full resync.

    Attributes:
        sysctls: the IPVS sysctls (see `DirectorSysctls` for each default's reason); None
            leaves them alone (LVS_MANAGE_SYSCTLS=false), for nodes whose administrator
            manages them. `ip_forward` is turned on when a NAT VirtualServer is programmed.
        timeouts: IPVS connection timeouts (ipvsadm --set); 0 keeps the kernel's value.
    """

    sysctls: DirectorSysctls | None = field(default_factory=DirectorSysctls)
    timeouts: Timeouts = field(default_factory=Timeouts)


KEEPALIVED = "keepalived"
LEASE = "lease"
ENGINES = (KEEPALIVED, LEASE)


@dataclass(frozen=True)
class VRRPSettings:
    """How this director takes part in VRRP (LVS_HA_ENGINE=keepalived; see `vrrp`).

    Attributes:
        interface: where adverts go out and come in; None: the agent's VIP interface
            (LVS_INTERFACE), else the default route's.
        address: this director's IPv4 address there, which it publishes in its Lease for
            the others' unicast_peer lists; None: the interface's first IPv4 address.
        advert_seconds: the advert interval. A backup takes over about 3 intervals after
            the last advert it heard: 0.1 gives 0.33 s measured (keepalived's default of 1
            gives 3.2 s); keepalived accepts 0.01 and up.
        preempt_delay_seconds: how long a director that comes back (or starts) waits
            before it takes its VIPs back from a lower-priority holder, so one that flaps
            does not pull VIPs back and forth.
        vrids: the VRID range the instances use; restrict it when other VRRP routers
            (a control-plane keepalived, kube-vip) share the segment.
        garp_refresh_seconds: a master repeats gratuitous ARP / NA this often (whole
            seconds): clients left on the wrong MAC after a partition heals come back
            within it (without it: 15-40 s, measured).
        vip_lifetime_seconds: the lifetime the keepalived container's watchdog keeps on
            the VIPs keepalived holds; a VIP outlives a killed or frozen keepalived by at
            most this. 0: no watchdog.
        directory: the folder shared with the keepalived container (`vrrp.Paths`).
        binary: keepalived, to check a configuration (`keepalived -t`) before it is used.
    """

    interface: str | None = None
    address: str | None = None
    advert_seconds: float = 0.1
    preempt_delay_seconds: float = 5.0
    vrids: tuple[int, int] = (1, 255)
    garp_refresh_seconds: int = 1
    vip_lifetime_seconds: int = 2
    directory: Path = Path("/run/lvs-operator/keepalived")
    binary: str = "keepalived"

    def __post_init__(self) -> None:
        if self.advert_seconds < 0.01 or self.advert_seconds > 40:
            raise SettingsError(f"LVS_VRRP_ADVERT_SECONDS={self.advert_seconds:g}: VRRPv3 "
                                "takes 0.01 to 40 seconds")


@dataclass(frozen=True)
class HASettings:
    """Failover between directors (`election`, `lease`) and connection sync.

    Attributes:
        enabled: whether directors elect VIP holders at all (LVS_HA). Off, a director holds
            every VIP it programs, has no Lease and runs no sync daemon: only for a lone
            director (two of them would both hold the VIPs).
        namespace: where this director's Lease `lvs-director-<node>` lives (the agent's
            own namespace; every director watches the Leases there).
        lease_duration_seconds: engine `lease`: how long after the others last saw this
            director's Lease change they take its VIPs over (failover is about this plus a
            sync; 0.8 s there). Engine `keepalived` (60 s): only what the log and
            `lvs-operator` tools call a live director; a director with an expired Lease
            stays a VRRP peer (static stability: the API server may be the one away).
        renew_seconds: how often the Lease is renewed (engine lease: 0.2 s; keepalived:
            10 s, membership only).
        renew_deadline_seconds: engine lease: a director that has not completed a renewal
            within this of the start of its last successful one drops every VIP it holds
            (self-fence), before the others may take them (they wait the full duration).
            Must be below the duration; the difference must cover the releasing sync.
            Unused with keepalived (VRRP decides, whatever the API server does).
        settle_seconds: engine lease: a director that became live (started, came back)
            counts as a candidate against a live holder only after this, so a flapping
            director does not pull VIPs back and forth (keepalived: preempt delay).
        announce_seconds: period of the gratuitous ARP / unsolicited NA for the VIPs held
            while other directors could hold them too (0: only at takeover).
        sync_id: the syncid of the kernel's connection-sync daemons. 0 is fine for one
            group of directors per L2 segment: a master sends 0, and a backup with 0
            accepts the messages of every syncid.
        sync_interface: where the sync daemons send and receive (multicast 224.0.0.81);
            None: the interface the VIPs are held on (the first, by name, if several).
        engine: what carries the directors' liveness. `keepalived` (the default): VRRP
            on the directors' own network, so the data plane stands while the API server
            is away; the Lease is membership only (who the directors are, their labels
            and VRRP addresses). `lease`: the Leases themselves, renewed 5 times a second
            (every director drops its VIPs when the API server is away longer than the
            renew deadline); for segments where VRRP cannot run.
        vrrp: the VRRP settings (engine keepalived).
    """

    enabled: bool = True
    namespace: str = DEFAULT_NAMESPACE
    lease_duration_seconds: float = 60.0
    renew_seconds: float = 10.0
    renew_deadline_seconds: float = 45.0
    settle_seconds: float = 5.0
    announce_seconds: float = 10.0
    sync_id: int = 0
    sync_interface: str | None = None
    engine: str = KEEPALIVED
    vrrp: VRRPSettings = field(default_factory=VRRPSettings)

    @property
    def keepalived(self) -> bool:
        """Return whether keepalived's VRRP decides who holds the VIPs."""
        return self.enabled and self.engine == KEEPALIVED

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise SettingsError(f"LVS_HA_ENGINE={self.engine!r}: use keepalived or lease")
        if not 0 < self.renew_seconds < self.renew_deadline_seconds:
            raise SettingsError(
                f"LVS_LEASE_RENEW_SECONDS={self.renew_seconds:g} must be above 0 and below "
                f"LVS_LEASE_RENEW_DEADLINE_SECONDS={self.renew_deadline_seconds:g}")
        if not self.renew_deadline_seconds < self.lease_duration_seconds:
            raise SettingsError(
                f"LVS_LEASE_RENEW_DEADLINE_SECONDS={self.renew_deadline_seconds:g} must be "
                f"below LVS_LEASE_DURATION_SECONDS={self.lease_duration_seconds:g}: a "
                "director must drop its VIPs before the others may take them")
        if not 0 <= self.sync_id <= 255:
            raise SettingsError(f"LVS_SYNC_ID={self.sync_id}: must be 0 to 255")


@dataclass(frozen=True)
class Settings:
    """Everything `lvs-operator agent` is told.

    Attributes:
        node: this node's name (the downward API's spec.nodeName): which Node to watch, and
            the key of this director's entry in status.directors.
        kubeconfig: a kubeconfig file; None uses the in-cluster service account, else
            ~/.kube/config (`kube.client.Client.connect`).
        state_file: the record of the services and VIPs this director created (`ownership`);
            the drain deadlines are kept beside it (`drain_file`). On a hostPath, so that a
            restarted or upgraded agent knows what is its own.
        interface: where to hold VIPs whose VirtualServer names no spec.directors.interface;
            None means the interface of the node's default route.
        metrics_address: host:port of the Prometheus endpoint; "" serves none.
        ha: failover between directors and connection sync.
    """

    node: str
    kubeconfig: str | None = None
    state_file: Path = Path(DEFAULT_STATE_FILE)
    interface: str | None = None
    metrics_address: str = DEFAULT_METRICS_ADDRESS
    sync: SyncSettings = SyncSettings()
    watch: WatchSettings = WatchSettings()
    director: DirectorSettings = DirectorSettings()
    ha: HASettings = HASettings()

    @property
    def drain_file(self) -> Path:
        """Return where the drain deadlines are kept: beside the ownership record."""
        return self.state_file.with_name(f"{self.state_file.stem}.drains.json")


def from_env(env: Mapping[str, str], **flags: str | None) -> Settings:
    """Return the settings that environment `env` and command-line `flags` give.

    `flags` are node, kubeconfig, state_file, interface, metrics_address, namespace,
    lease_duration, sync_interface, ha_engine, vrrp_interface, keepalived_dir; a flag that
    is None falls back to its environment variable.

    Raises:
        SettingsError: naming the variable (or flag) that is missing or malformed.
    """
    def pick(flag: str, variable: str) -> str | None:
        value = flags.get(flag)
        return value if value is not None else env.get(variable)

    node = pick("node", "NODE_NAME")
    if not node:
        raise SettingsError("the node name is required: set NODE_NAME (in a DaemonSet from "
                            "the downward API, fieldRef spec.nodeName) or pass --node")
    state_file = pick("state_file", "LVS_STATE_FILE")
    metrics = pick("metrics_address", "LVS_METRICS_ADDRESS")
    if metrics:
        split_address(metrics, what="LVS_METRICS_ADDRESS / --metrics-address")
    sysctls: DirectorSysctls | None = None
    if _bool(env, "LVS_MANAGE_SYSCTLS", True):
        sysctls = DirectorSysctls(
            conntrack=_bool(env, "LVS_SYSCTL_CONNTRACK", True),
            expire_nodest_conn=_bool(env, "LVS_SYSCTL_EXPIRE_NODEST_CONN", True),
            expire_quiescent_template=_bool(env, "LVS_SYSCTL_EXPIRE_QUIESCENT_TEMPLATE", True),
            conn_reuse_mode=int(_number(env, "LVS_SYSCTL_CONN_REUSE_MODE", 1, whole=True)),
        )
    engine = (pick("ha_engine", "LVS_HA_ENGINE") or KEEPALIVED).strip().lower()
    # With keepalived the Lease is membership: renewed as rarely as kubelet's node Lease.
    membership = engine == KEEPALIVED
    flag = flags.get("lease_duration")
    duration = _number({"LVS_LEASE_DURATION_SECONDS": flag} if flag is not None else env,
                       "LVS_LEASE_DURATION_SECONDS", 60.0 if membership else 0.8, low=0.01)
    vrids = (env.get("LVS_VRRP_VRIDS") or "1-255").strip()
    try:
        vrid_range = vrrp.parse_vrids(vrids)
    except vrrp.VRRPError as e:
        raise SettingsError(f"LVS_VRRP_VRIDS: {e}") from None
    vrrp_settings = VRRPSettings(
        interface=pick("vrrp_interface", "LVS_VRRP_INTERFACE") or None,
        address=env.get("LVS_VRRP_ADDRESS") or None,
        advert_seconds=_number(env, "LVS_VRRP_ADVERT_SECONDS", 0.1, low=0.01),
        preempt_delay_seconds=_number(env, "LVS_VRRP_PREEMPT_DELAY_SECONDS", 5.0),
        vrids=vrid_range,
        garp_refresh_seconds=int(_number(env, "LVS_VRRP_GARP_REFRESH_SECONDS", 1,
                                         whole=True)),
        vip_lifetime_seconds=int(_number(env, "LVS_VIP_LIFETIME_SECONDS", 2, whole=True)),
        directory=Path(pick("keepalived_dir", "LVS_KEEPALIVED_DIR")
                       or "/run/lvs-operator/keepalived"),
        binary=env.get("LVS_KEEPALIVED_BINARY") or "keepalived",
    )
    if vrrp_settings.address is not None:
        try:
            ipaddress.IPv4Address(vrrp_settings.address)
        except ValueError:
            raise SettingsError(f"LVS_VRRP_ADDRESS={vrrp_settings.address!r}: must be an "
                                "IPv4 address of this director (VRRP adverts are IPv4)") \
                from None
    ha = HASettings(
        enabled=_bool(env, "LVS_HA", True),
        namespace=pick("namespace", "LVS_NAMESPACE") or env.get("POD_NAMESPACE")
        or DEFAULT_NAMESPACE,
        lease_duration_seconds=duration,
        # Unset, they scale with the duration as the defaults do (1/4 and 3/4 of it).
        renew_seconds=_number(env, "LVS_LEASE_RENEW_SECONDS",
                              min(10.0, round(duration / 6, 6)) if membership
                              else round(duration / 4, 6), low=0.01),
        renew_deadline_seconds=_number(env, "LVS_LEASE_RENEW_DEADLINE_SECONDS",
                                       round(duration * 3 / 4, 6), low=0.01),
        settle_seconds=_number(env, "LVS_LEASE_SETTLE_SECONDS", 5.0),
        announce_seconds=_number(env, "LVS_ANNOUNCE_SECONDS", 10.0),
        sync_id=int(_number(env, "LVS_SYNC_ID", 0, whole=True)),
        sync_interface=pick("sync_interface", "LVS_SYNC_INTERFACE") or None,
        engine=engine,
        vrrp=vrrp_settings,
    )
    return Settings(
        node=node,
        kubeconfig=pick("kubeconfig", "KUBECONFIG") or None,
        state_file=Path(state_file or DEFAULT_STATE_FILE),
        interface=pick("interface", "LVS_INTERFACE") or None,
        metrics_address=DEFAULT_METRICS_ADDRESS if metrics is None else metrics,
        sync=SyncSettings(
            resync_seconds=_number(env, "LVS_RESYNC_SECONDS", 30.0, low=1.0),
            min_interval_seconds=_number(env, "LVS_MIN_SYNC_INTERVAL_SECONDS", 0.05),
            drain_poll_seconds=_number(env, "LVS_DRAIN_POLL_SECONDS", 2.0, low=0.1),
            retry_seconds=_number(env, "LVS_RETRY_SECONDS", 5.0, low=0.1),
        ),
        director=DirectorSettings(
            sysctls=sysctls,
            timeouts=Timeouts(
                tcp=int(_number(env, "LVS_TIMEOUT_TCP", 0, whole=True)),
                tcp_fin=int(_number(env, "LVS_TIMEOUT_TCP_FIN", 0, whole=True)),
                udp=int(_number(env, "LVS_TIMEOUT_UDP", 0, whole=True)),
            ),
        ),
        ha=ha,
    )


def split_address(address: str, *, what: str = "the metrics address") -> tuple[str, int]:
    """Return (host, port) of `host:port` (`[v6]:port` for IPv6; an empty host = all).

    Raises:
        SettingsError: naming `what`, when it is not host:port with a port up to 65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"{what}: {address!r} is not host:port (e.g. 0.0.0.0:9640, "
                            "[::]:9640, or empty to serve no metrics)")
    return host.strip("[]"), int(port)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _TRUE | _FALSE:
        return raw in _TRUE
    raise SettingsError(f"{name}={env[name]!r}: use true or false (or 1 / 0)")


def _number(env: Mapping[str, str], name: str, default: float, *, low: float = 0.0,
            whole: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise SettingsError(f"{name}={raw!r}: must be {kind}") from None
    if value < low:
        raise SettingsError(f"{name}={raw!r}: must be at least {low:g}")
    return value
