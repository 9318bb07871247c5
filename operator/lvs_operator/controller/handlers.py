"""The controller's kopf glue: credentials, the VirtualServer handler, start-up and clean-up,
and `run`.

VirtualServers reach the controller through `@kopf.on.event` (the product's design: kopf's
handlers watch the custom resource). The handler stores nothing on the object (no finalizer,
no annotation: an event handler has no progress to keep) and only hands the event to the
`Controller`, which coalesces and reconciles. kopf runs `standalone` (no peering): replicas
elect their writer with the controller's own Lease (`leader`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf

from lvs_operator.api import GROUP, PLURAL, VERSION
from lvs_operator.controller.credentials import connection_info
from lvs_operator.controller.reconciler import CONCURRENCY, Controller
from lvs_operator.controller.settings import Settings, default_identity
from lvs_operator.kube import client


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Register the controller's credentials, VirtualServer handler, start-up and clean-up
    on `registry`."""

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        assert controller.api is not None
        return connection_info(controller.api.configuration)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def virtualserver(event: kopf.RawEvent, **_: Any) -> None:
        controller.virtualserver_event(event.get("type"), event["object"])

    @kopf.on.startup(registry=registry)
    async def start(**_: Any) -> None:
        await controller.start()

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        await controller.stop()


def operator_settings() -> kopf.OperatorSettings:
    """Return kopf's settings for the controller."""
    settings = kopf.OperatorSettings()
    # Events are posted by the controller itself, by the leader only.
    settings.posting.enabled = False
    return settings


async def run(settings: Settings) -> None:
    """Run the controller until SIGINT/SIGTERM (kopf handles both and cleans up)."""
    # One client for everything the controller asks of the API server (kopf's own watch of
    # VirtualServers logs in with the same credentials).
    api = await asyncio.to_thread(client.Client.connect, settings.kubeconfig,
                                  pool=CONCURRENCY + 4)
    registry = kopf.OperatorRegistry()
    controller = Controller(settings, api=api)
    register(registry, controller)
    kopf_settings = operator_settings()
    if settings.webhook is not None:
        # Every replica serves the webhook, leader or not (its reads are its own, fresh per
        # admission); only status writes and Events wait for the Lease. Imported here: the
        # certificate code pulls in `cryptography`, which a controller without it never needs.
        from lvs_operator.controller import webhook

        hook = settings.webhook
        webhook.configure(kopf_settings, registry=registry, image=hook.image,
                          namespace=hook.namespace, service_name=hook.service_name,
                          port=hook.port, cert_dir=hook.cert_dir, secret_name=hook.secret_name,
                          configuration_name=hook.configuration_name,
                          validating_configuration_name=hook.validating_configuration_name,
                          extra_sans=hook.extra_sans, image_pull_policy=hook.image_pull_policy,
                          api=api)
    # An identity of our own: kopf's default asks getpass.getuser(), which raises under a
    # uid with no passwd entry (any runAsUser an admin or OpenShift picks).
    await kopf.operator(registry=registry, settings=kopf_settings, standalone=True,
                        clusterwide=not settings.namespaces, namespaces=settings.namespaces,
                        # kopf types it as its own NewType of str, which it does not export.
                        identity=settings.identity or default_identity())  # type: ignore[arg-type]
