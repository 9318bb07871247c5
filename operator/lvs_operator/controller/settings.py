"""How the controller runs: its settings, set by `lvs-operator controller`'s options."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class WebhookSettings:
    """How this replica serves the webhooks: the real-server Pod webhook and the VirtualServer
    validating webhook (see `webhook.configure`)."""

    image: str
    namespace: str
    service_name: str = "lvs-operator-webhook"
    port: int = 9443
    cert_dir: str | None = None
    secret_name: str | None = None
    configuration_name: str | None = None
    validating_configuration_name: str | None = None
    extra_sans: tuple[str, ...] = ()
    image_pull_policy: str | None = None


@dataclass(frozen=True)
class Settings:
    """How the controller runs; `lvs-operator controller` sets these from its options.

    `kubeconfig` None means in-cluster credentials, else $KUBECONFIG or ~/.kube/config.
    `namespaces` empty means cluster-wide (conflicts are only seen within the watched
    namespaces otherwise). The Lease timings follow client-go's leader election: a leader
    that cannot renew for `renew_deadline` seconds stops acting, and the others take over
    once the Lease has not changed for `lease_duration` seconds, as they observe it on their
    own clocks (no clock agreement needed); `retry_period` is how often they look.
    """

    kubeconfig: str | None = None
    namespaces: tuple[str, ...] = ()
    webhook: WebhookSettings | None = None  # None: this replica serves no webhook
    lease_namespace: str = "default"
    lease_name: str = "lvs-operator-controller"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # The spec.loadBalancerClass of the LoadBalancer Services this controller serves, and
    # whether it serves those without a class too (off: it may sit beside another
    # implementation, such as the cloud's, that serves them).
    load_balancer_class: str = "lvs.dev/ipvs"
    load_balancer_default: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("Lease timings need 0 < retry period < renew deadline < "
                             f"lease duration, got {self.retry_period}, {self.renew_deadline}, "
                             f"{self.lease_duration}")


def default_identity() -> str:
    """Return a Lease holder name: the pod's (or host's) name and a random suffix, so a
    restarted replica is a new holder."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"
