"""The controller's kopf glue: credentials, start-up and clean-up, and `run`."""

from __future__ import annotations

from typing import Any

import kopf

from lvs_operator.controller.credentials import connection_info
from lvs_operator.controller.reconciler import Controller
from lvs_operator.controller.settings import Settings


def register(registry: kopf.OperatorRegistry, controller: Controller) -> None:
    """Register the controller's start-up, clean-up and credentials on `registry`."""

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        return await connection_info(controller.settings.kubeconfig)

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
    registry = kopf.OperatorRegistry()
    controller = Controller(settings)
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
                          extra_sans=hook.extra_sans, image_pull_policy=hook.image_pull_policy)
    await kopf.operator(registry=registry, settings=kopf_settings, standalone=True,
                        clusterwide=not settings.namespaces, namespaces=settings.namespaces)
