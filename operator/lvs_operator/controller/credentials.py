"""The controller's credentials: one source for its own client and for kopf's."""

from __future__ import annotations

import kopf
from kubernetes.aio import client
from kubernetes.aio import config as kube_config

# Status writes in flight at once (the reconciler's limit), plus Events and the Lease.
CONNECTIONS = 8 + 4


async def load_configuration(kubeconfig: str | None) -> client.Configuration:
    """Return the API client configuration from `kubeconfig`, or else in-cluster, or else
    $KUBECONFIG or ~/.kube/config.

    Raises:
        kubernetes.aio.config.ConfigException: when none of them is there.
    """
    configuration = client.Configuration()
    try:
        if kubeconfig:
            raise kube_config.ConfigException("a kubeconfig file was given")
        kube_config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration)
    except kube_config.ConfigException:
        await kube_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration)
    configuration.connection_pool_maxsize = CONNECTIONS  # statuses, Events, the Lease
    return configuration


async def connection_info(kubeconfig: str | None) -> kopf.ConnectionInfo:
    """Return kopf's credentials, from the same source as the controller's own client.

    Raises:
        kubernetes.aio.config.ConfigException: when there are none.
    """
    configuration = await load_configuration(kubeconfig)
    header = (await configuration.get_api_key_with_prefix("BearerToken")
              or await configuration.get_api_key_with_prefix("authorization"))
    scheme, _, token = (header or "").rpartition(" ")
    assert configuration.host is not None
    return kopf.ConnectionInfo(
        server=configuration.host, ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl, scheme=scheme or None, token=token or None,
        certificate_path=configuration.cert_file, private_key_path=configuration.key_file)
