"""The `lvs-operator` command: one console script, one subcommand per job.

    lvs-operator ipvs show [--stats|--rate] [-o json]
    lvs-operator ipvs apply -f FILE [--interface IF] [--dry-run] [--drain] [--adopt]
    lvs-operator realserver-init --vip ADDR [--vip ADDR ...] --mode dr|tunnel
    lvs-operator controller [--kubeconfig FILE] [--namespace NS ...] [--lease-...]
    lvs-operator agent [--node NODE] [--kubeconfig FILE] [--interface IF] [...]
    lvs-operator keepalived [--dir DIR] [--keepalived PATH] [--metrics-address HOST:PORT]

Imports are deferred to the subcommand that needs them: `ipvs apply` is benchmarked end to
end against `ipvsadm -R`, and importing the Kubernetes client alone costs more than that.
"""

from __future__ import annotations

import argparse
import collections
import gc
import ipaddress
import json
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from lvs_operator import __version__

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# How long the agent trusts /proc/net/ip_vs to confirm a table a thorough netlink dump found
# as desired: drift in what that file does not show (scheduler flags, connection thresholds,
# tunnel encapsulation, persistence timeout) is repaired within this time. Ten resyncs.
AGENT_VERIFY_SECONDS = 300.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: sys.argv[1:]) and return the exit status."""
    args = _parser().parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        _parser().print_help(sys.stderr)
        return EXIT_USAGE
    status: int = handler(args)
    return status


def console() -> NoReturn:
    """Run the `lvs-operator` console script: `main` on sys.argv, then exit with its status."""
    sys.exit(main())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvs-operator",
        description="Linux Virtual Server (kernel IPVS) as a declarative load balancer.",
    )
    parser.add_argument("--version", action="version", version=f"lvs-operator {__version__}")
    commands = parser.add_subparsers(metavar="COMMAND")

    ipvs = commands.add_parser("ipvs", help="show or program this node's IPVS table")
    ipvs_commands = ipvs.add_subparsers(metavar="ACTION")
    show = ipvs_commands.add_parser("show", help="list virtual services (like ipvsadm -L -n)")
    numbers = show.add_mutually_exclusive_group()
    numbers.add_argument("--stats", action="store_true", help="show counters")
    numbers.add_argument("--rate", action="store_true", help="show rates")
    show.add_argument("-o", "--output", choices=("text", "json"), default="text")
    show.set_defaults(handler=_ipvs_show)

    apply = ipvs_commands.add_parser(
        "apply",
        help="make FILE's VirtualServers the whole IPVS state of this director",
        description="FILE holds VirtualServer documents (YAML stream or JSON) with static "
        "backend.addresses. Services created by earlier applies and missing from FILE are "
        "withdrawn; services this tool never created are left alone, even on a key FILE "
        "asks for: such a conflict is named, the rest is applied, and the exit status is 1 "
        "(unless --adopt).",
    )
    apply.add_argument("-f", "--filename", required=True, help="'-' reads stdin")
    apply.add_argument("--interface", help="also hold each VIP on this interface and send "
                       "gratuitous ARP / unsolicited neighbour advertisements")
    apply.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    apply.add_argument("--drain", action="store_true",
                       help="withdraw real servers gracefully: weight 0 first, delete when they "
                       "have no connections (re-run to finish)")
    apply.add_argument("--adopt", action="store_true",
                       help="take over the services FILE asks for that something else "
                       "created (kube-proxy, keepalived, ipvsadm): they are changed to what "
                       "FILE says and recorded as this tool's, to be withdrawn with FILE")
    apply.add_argument("--state-file", default=_default_state_file(),
                       help="record of what this tool created (default %(default)s, "
                       "or $LVS_STATE_FILE)")
    apply.set_defaults(handler=_ipvs_apply)

    realserver = commands.add_parser(
        "realserver-init",
        help="make this network namespace a DR or Tunnel real server for VIPs",
        description="DR: VIPs on lo, arp_ignore=1, arp_announce=2. Tunnel: VIPs on tunl0, "
        "rp_filter relaxed. Needs only CAP_NET_ADMIN; idempotent.",
    )
    realserver.add_argument("--vip", action="append", required=True, type=ipaddress.ip_address,
                            help="a virtual IP this server answers for (repeatable)")
    realserver.add_argument("--mode", required=True, choices=("dr", "tunnel"))
    realserver.set_defaults(handler=_realserver_init)

    controller = commands.add_parser(
        "controller",
        help="resolve VirtualServers' real servers and report their status (kopf)",
        description="Watches VirtualServers, Services and EndpointSlices and keeps each "
        "VirtualServer's status (real servers, conditions, Events) up to date. Several "
        "replicas may run: the holder of a coordination.k8s.io Lease acts, the others stand "
        "by with warm caches.",
    )
    controller.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster "
                            "credentials, else $KUBECONFIG or ~/.kube/config)")
    controller.add_argument("--namespace", action="append", default=[], metavar="NS",
                            help="watch only this namespace (repeatable; default: all; "
                            "conflicts are only seen within the watched namespaces)")
    controller.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE")
                            or "default", help="namespace of the leader-election Lease "
                            "(default: $POD_NAMESPACE, else 'default')")
    controller.add_argument("--lease-name", default="lvs-operator-controller",
                            help="name of the Lease (default: %(default)s)")
    controller.add_argument("--lease-duration", type=float, default=15.0, metavar="SECONDS",
                            help="how long a silent leader keeps the Lease; a standby takes "
                            "over after about that long (default: %(default)s; the leader "
                            "renews every 2/15 of it and gives up after 2/3 without success)")
    controller.add_argument("--identity", help="this replica's name in the Lease (default: "
                            "$POD_NAME or the host name, and a random suffix)")
    controller.add_argument("--log-level", default="info",
                            choices=("debug", "info", "warning", "error"))
    balancer = controller.add_argument_group(
        "LoadBalancer Services",
        "The controller serves Services of type LoadBalancer whose spec.loadBalancerClass is "
        "its class: an address from a VIPPool, a VirtualServer per IP family, "
        "status.loadBalancer.")
    balancer.add_argument("--load-balancer-class", default="lvs.dev/ipvs", metavar="CLASS",
                          help="the spec.loadBalancerClass served (default: %(default)s)")
    balancer.add_argument("--load-balancer-default", action="store_true",
                          help="serve LoadBalancer Services without a class too (off by "
                          "default, so another implementation may serve them)")
    hook = controller.add_argument_group(
        "webhooks",
        "With --webhook every replica serves a mutating admission webhook that adds the "
        "realserver-init init container to pods that a DirectRouting or Tunnel VirtualServer's "
        "Service selects, and a validating one that refuses VirtualServers outside the VIP "
        "pools of their namespace or on another namespace's VIP (the webhook configurations "
        "themselves come from the Helm chart).")
    hook.add_argument("--webhook", action="store_true", help="serve the webhooks")
    hook.add_argument("--webhook-port", type=int, default=9443,
                      help="HTTPS port to listen on (default: %(default)s)")
    hook.add_argument("--webhook-service", default="lvs-operator-webhook",
                      help="the Service in front of the webhook; names the generated "
                      "certificate (default: %(default)s)")
    hook.add_argument("--webhook-namespace", default=os.environ.get("POD_NAMESPACE")
                      or "default", help="namespace of that Service and of the certificate "
                      "Secret (default: $POD_NAMESPACE, else 'default')")
    certs = hook.add_mutually_exclusive_group()
    certs.add_argument("--webhook-secret", metavar="NAME", help="keep a generated "
                       "certificate in this Secret, shared by all replicas")
    certs.add_argument("--webhook-cert-dir", metavar="DIR", help="use tls.crt, tls.key and "
                       "ca.crt from DIR (a mounted Secret, e.g. one cert-manager writes)")
    hook.add_argument("--webhook-configuration", metavar="NAME", help="keep the caBundle "
                      "of this MutatingWebhookConfiguration set to our CA (leave out when "
                      "cert-manager's CA injector does it)")
    hook.add_argument("--validating-webhook-configuration", metavar="NAME", help="the same "
                      "for this ValidatingWebhookConfiguration (of VirtualServers)")
    hook.add_argument("--webhook-extra-san", action="append", default=[], metavar="NAME",
                      help="another DNS name or IP for a generated certificate (repeatable)")
    hook.add_argument("--realserver-image", default=os.environ.get("LVS_IMAGE", ""),
                      help="image of the injected init container: this project's image "
                      "(default: $LVS_IMAGE)")
    hook.add_argument("--image-pull-policy", choices=("Always", "IfNotPresent", "Never"),
                      help="pull policy of the injected init container")
    controller.set_defaults(handler=_controller)

    agent = commands.add_parser(
        "agent",
        help="the director agent: program this node's IPVS and VIPs from VirtualServers",
        description="Runs on every director node (DaemonSet, hostNetwork, NET_ADMIN): "
        "converges the kernel's IPVS table and VIPs to the VirtualServers that select this "
        "node, drains removed real servers, reports status.directors.<node>, Events and "
        "Prometheus metrics. Only what it created is ever changed.",
        epilog="Also read from the environment: LVS_RESYNC_SECONDS (30), "
        "LVS_MIN_SYNC_INTERVAL_SECONDS (0.05), LVS_DRAIN_POLL_SECONDS (2), LVS_RETRY_SECONDS "
        "(5), LVS_MANAGE_SYSCTLS (true), LVS_SYSCTL_CONNTRACK, LVS_SYSCTL_EXPIRE_NODEST_CONN, "
        "LVS_SYSCTL_EXPIRE_QUIESCENT_TEMPLATE, LVS_SYSCTL_CONN_REUSE_MODE (1 each), "
        "LVS_TIMEOUT_TCP, LVS_TIMEOUT_TCP_FIN, LVS_TIMEOUT_UDP (0: keep the kernel's); "
        "failover: LVS_HA (true), LVS_SYNC_ID (0); with keepalived: LVS_VRRP_ADDRESS (the "
        "VRRP interface's first IPv4), LVS_VRRP_ADVERT_SECONDS (0.1), "
        "LVS_VRRP_PREEMPT_DELAY_SECONDS (5), LVS_VRRP_VRIDS (1-255), "
        "LVS_VRRP_GARP_REFRESH_SECONDS (1), LVS_VIP_LIFETIME_SECONDS (2), "
        "LVS_KEEPALIVED_BINARY (keepalived), LVS_LEASE_RENEW_SECONDS (10); with the lease "
        "engine: LVS_LEASE_RENEW_SECONDS (0.2), LVS_LEASE_RENEW_DEADLINE_SECONDS (0.6), "
        "LVS_LEASE_SETTLE_SECONDS (5), LVS_ANNOUNCE_SECONDS (10).",
    )
    agent.add_argument("--node", help="this node's name (default: $NODE_NAME)")
    agent.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else "
                       "in-cluster credentials, else ~/.kube/config)")
    agent.add_argument("--state-file", help="record of what this director created (default: "
                       "$LVS_STATE_FILE, else /var/lib/lvs-operator/owned.json)")
    agent.add_argument("--interface", help="hold VIPs here when a VirtualServer names no "
                       "spec.directors.interface (default: $LVS_INTERFACE, else the "
                       "interface of the default route)")
    agent.add_argument("--metrics-address", metavar="HOST:PORT", help="Prometheus endpoint "
                       "(default: $LVS_METRICS_ADDRESS, else 0.0.0.0:9640; '' for none)")
    agent.add_argument("--namespace", help="namespace of the directors' Leases (default: "
                       "$LVS_NAMESPACE, else $POD_NAMESPACE, else lvs-system)")
    agent.add_argument("--lease-duration", metavar="SECONDS", help="others take this "
                       "director's VIPs over when its Lease has not changed for this long "
                       "(engine lease; default: $LVS_LEASE_DURATION_SECONDS, else 0.8; "
                       "with keepalived, 60: the Lease is membership only)")
    agent.add_argument("--ha-engine", choices=("keepalived", "lease"), help="what carries "
                       "the directors' liveness: keepalived's VRRP on the directors' own "
                       "network (needs the keepalived container), or the Leases in the API "
                       "server (default: $LVS_HA_ENGINE, else keepalived)")
    agent.add_argument("--vrrp-interface", metavar="IF", help="VRRP adverts go out and "
                       "come in here (default: $LVS_VRRP_INTERFACE, else the VIP interface)")
    agent.add_argument("--keepalived-dir", metavar="DIR", help="folder shared with the "
                       "keepalived container (default: $LVS_KEEPALIVED_DIR, else "
                       "/run/lvs-operator/keepalived)")
    agent.add_argument("--sync-interface", metavar="IF", help="interface of the IPVS "
                       "connection-sync daemons (default: $LVS_SYNC_INTERFACE, else the VIP "
                       "interface)")
    agent.add_argument("--log-level", default="info",
                       choices=("debug", "info", "warning", "error"))
    agent.set_defaults(handler=_agent)

    keepalived = commands.add_parser(
        "keepalived",
        help="the director's keepalived container: run keepalived on the agent's files",
        description="Runs beside the agent in its pod: waits for the keepalived.conf and "
        "instances.json the agent writes to DIR, installs the VRRP guard (an nftables table "
        "of its own), runs keepalived (VRRP only) and reloads it when its configuration "
        "changes, and makes sure no VIP outlives it: VIPs of a keepalived that stops "
        "advertising are deleted, and the others carry a lifetime that lapses if this "
        "container dies.",
        epilog="Also read from the environment: LVS_VRRP_GUARD (true; false runs without "
        "the guard).",
    )
    keepalived.add_argument("--dir", help="the folder shared with the agent (default: "
                            "$LVS_KEEPALIVED_DIR, else /run/lvs-operator/keepalived)")
    keepalived.add_argument("--keepalived", metavar="PATH", help="the keepalived program "
                            "(default: $LVS_KEEPALIVED_BINARY, else keepalived)")
    keepalived.add_argument("--metrics-address", metavar="HOST:PORT", help="Prometheus "
                            "endpoint (default: $LVS_KEEPALIVED_METRICS_ADDRESS, else "
                            "0.0.0.0:9641; '' for none)")
    keepalived.add_argument("--log-level", default="info",
                            choices=("debug", "info", "warning", "error"))
    keepalived.set_defaults(handler=_keepalived)
    return parser


def _default_state_file() -> str:
    from lvs_operator.ownership import DEFAULT_STATE_FILE

    return os.environ.get("LVS_STATE_FILE", DEFAULT_STATE_FILE)


def _ipvs_show(args: argparse.Namespace) -> int:
    from lvs_operator import show
    from lvs_operator.ipvs import IPVSError
    from lvs_operator.ipvs.kernel import KernelIPVS

    try:
        table = KernelIPVS().dump()
    except IPVSError as error:
        return _fail(str(error))
    if args.output == "json":
        print(json.dumps(show.table_to_json(table), indent=2))
    else:
        print(show.format_table(table, stats=args.stats, rate=args.rate))
    return EXIT_OK


def _ipvs_apply(args: argparse.Namespace) -> int:
    # A bulk file becomes a few hundred thousand objects and none of them is in a reference
    # cycle: the cyclic collector would only walk them again and again (a tenth of the
    # command's work). Refcounting still frees everything; the collector is back afterwards.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _apply(args)
    finally:
        if enabled:
            gc.enable()


def _apply(args: argparse.Namespace) -> int:
    from lvs_operator import documents, syncer
    from lvs_operator.ipvs import IPVSError
    from lvs_operator.ipvs.kernel import KernelIPVS
    from lvs_operator.model import Forwarding, ServiceKey
    from lvs_operator.network.errors import NetworkError
    from lvs_operator.network.sysctl import DirectorSysctls, apply_director_sysctls
    from lvs_operator.ownership import OwnershipStore

    source = "<stdin>" if args.filename == "-" else args.filename
    try:
        if source == "<stdin>":
            text = sys.stdin.read()
        else:
            with open(source, encoding="utf-8") as handle:
                text = handle.read()
    except OSError as error:
        return _fail(f"cannot read {source}: {error.strerror}", status=EXIT_USAGE)
    try:
        servers = documents.load(text, source=source)
        desired = documents.desired_table(servers)
    except documents.DocumentError as error:
        return _fail(f"{error}\nnothing was changed", status=EXIT_USAGE)
    store = OwnershipStore(args.state_file)
    try:
        result = syncer.sync(KernelIPVS(), desired, store=store, drain=args.drain,
                             dry_run=args.dry_run, adopt=args.adopt)
        vips = syncer.VipResult(added=[], removed=[])
        if args.interface or store.load().vips:
            # Imported here: it loads pyroute2, which costs more than a whole bulk apply.
            from lvs_operator.network.holder import KernelVipHolder

            vips = syncer.sync_vips(args.interface, {vs.vip for vs in servers}, store=store,
                                    holder=KernelVipHolder(), dry_run=args.dry_run)
        nat = any(vs.forwarding is Forwarding.NAT for vs in servers)
        # NAT needs forwarding for the replies; DR and Tunnel leave the node's setting alone.
        sysctls = [] if args.dry_run or not desired else apply_director_sysctls(
            DirectorSysctls(ip_forward=True if nat else None))
    except (IPVSError, NetworkError, ValueError) as error:
        return _fail(str(error))
    if args.dry_run:
        for operation in result.operations:
            print(operation)
    for change in sysctls:
        print(f"set {change}")
    for interface, address in vips.removed:
        print(f"{'would release' if args.dry_run else 'released'} VIP {address} on {interface}")
    for interface, address in vips.added:
        print(f"{'would hold' if args.dry_run else 'holding'} VIP {address} on {interface}")
    if result.adopted:
        print(f"{'would adopt' if args.dry_run else 'adopted'} "
              f"{', '.join(str(key) for key in sorted(result.adopted, key=ServiceKey.sort_key))}")
    print(_summary(result.operations, dry_run=args.dry_run))
    if result.conflicts:
        return _fail(f"{syncer.describe_conflicts(result.conflicts)}; or re-run with --adopt "
                     "to take it over as FILE describes")
    return EXIT_OK


def _summary(operations: Sequence[object], *, dry_run: bool) -> str:
    if not operations:
        return "no changes: the kernel already matches"
    counts = collections.Counter(type(op).__name__ for op in operations)
    parts = ", ".join(f"{n} {name}" for name, n in sorted(counts.items()))
    return f"{'would apply' if dry_run else 'applied'} {len(operations)} operations ({parts})"


def _realserver_init(args: argparse.Namespace) -> int:
    from lvs_operator import realserver
    from lvs_operator.network.errors import NetworkError

    try:
        report = realserver.setup(vips=args.vip, mode=args.mode)
    except realserver.SetupError as error:
        if error.report is not None:
            print(error.report)  # what was set before the failure: it stays set
        return _fail(str(error))
    except (ValueError, NetworkError) as error:
        return _fail(str(error))
    print(report)
    return EXIT_OK


def _controller(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from lvs_operator.controller import handlers
    from lvs_operator.controller import settings as controller_settings

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    webhook = None
    if args.webhook:
        if not args.realserver_image:
            return _fail("--webhook needs the image to inject: give --realserver-image IMAGE "
                         "(or set LVS_IMAGE)", status=EXIT_USAGE)
        webhook = controller_settings.WebhookSettings(
            image=args.realserver_image, namespace=args.webhook_namespace,
            service_name=args.webhook_service, port=args.webhook_port,
            cert_dir=args.webhook_cert_dir, secret_name=args.webhook_secret,
            configuration_name=args.webhook_configuration,
            validating_configuration_name=args.validating_webhook_configuration,
            extra_sans=tuple(args.webhook_extra_san), image_pull_policy=args.image_pull_policy)
    try:
        settings = controller_settings.Settings(
            kubeconfig=args.kubeconfig, namespaces=tuple(args.namespace), webhook=webhook,
            lease_namespace=args.lease_namespace, lease_name=args.lease_name,
            identity=args.identity or controller_settings.default_identity(),
            lease_duration=args.lease_duration, renew_deadline=args.lease_duration * 2 / 3,
            retry_period=args.lease_duration * 2 / 15,
            load_balancer_class=args.load_balancer_class,
            load_balancer_default=args.load_balancer_default)
    except ValueError as error:
        return _fail(str(error), status=EXIT_USAGE)
    asyncio.run(handlers.run(settings))
    return EXIT_OK


def _agent(args: argparse.Namespace) -> int:
    import logging
    import signal

    from lvs_operator.agent import loop
    from lvs_operator.agent import settings as agent_settings
    from lvs_operator.ipvs import IPVSError
    from lvs_operator.ipvs.kernel import KernelIPVS
    from lvs_operator.kube import client
    from lvs_operator.network.holder import KernelVipHolder
    from lvs_operator.network.sysctl import apply_director_sysctls

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = agent_settings.from_env(
            os.environ, node=args.node, kubeconfig=args.kubeconfig, state_file=args.state_file,
            interface=args.interface, metrics_address=args.metrics_address,
            namespace=args.namespace, lease_duration=args.lease_duration,
            sync_interface=args.sync_interface, ha_engine=args.ha_engine,
            vrrp_interface=args.vrrp_interface, keepalived_dir=args.keepalived_dir)
    except agent_settings.SettingsError as error:
        return _fail(str(error), status=EXIT_USAGE)
    try:
        # Resyncs confirm a table verified less than AGENT_VERIFY_SECONDS ago from
        # /proc/net/ip_vs (one read) instead of a netlink dump per service; see KernelIPVS.
        ipvs = KernelIPVS(verify_seconds=AGENT_VERIFY_SECONDS).connect()
        api = client.Client.connect(settings.kubeconfig)
    except (IPVSError, client.ApiError) as error:
        return _fail(str(error))
    # Takeover announcements: 3 rounds 0.1 s apart (a lost frame is covered by the next).
    agent = loop.Agent(settings, api=api, ipvs=ipvs, vips=KernelVipHolder(interval=0.1),
                       sysctls=apply_director_sysctls)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.stop())
    try:
        agent.run()
    except OSError as error:
        return _fail(f"cannot serve metrics at {settings.metrics_address}: {error.strerror}")
    finally:
        api.close()
        ipvs.close()
    return EXIT_OK


def _keepalived(args: argparse.Namespace) -> int:
    import logging

    from lvs_operator.keepalived import supervisor

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = supervisor.settings_from(os.environ, dir=args.dir, binary=args.keepalived,
                                            metrics_address=args.metrics_address)
    except supervisor.SettingsError as error:
        return _fail(str(error), status=EXIT_USAGE)
    return supervisor.run(settings)


def _fail(message: str, *, status: int = EXIT_FAILED) -> int:
    print(f"lvs-operator: error: {message}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
