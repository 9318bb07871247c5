"""kopf's credentials, from the same source as the controller's own client."""

from __future__ import annotations

import kopf
from kubernetes import client


def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """Return kopf's credentials for the API server `configuration` (from
    `kube.client.Client.configuration`) points at: the token as it is now (kopf asks again
    when the server answers 401), or the client certificate."""
    header = (configuration.get_api_key_with_prefix("authorization")
              or configuration.get_api_key_with_prefix("BearerToken"))
    scheme, _, token = (header or "").rpartition(" ")
    assert configuration.host is not None
    return kopf.ConnectionInfo(
        server=configuration.host, ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl, scheme=scheme or None, token=token or None,
        certificate_path=configuration.cert_file, private_key_path=configuration.key_file)
