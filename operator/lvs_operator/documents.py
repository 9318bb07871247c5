"""Read VirtualServer documents from a file: a YAML stream, a JSON object or a `List`.

Every document is parsed before anything is applied, so one bad document changes nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from lvs_operator.api import spec
from lvs_operator.model import ServiceKey, VirtualService


class DocumentError(ValueError):
    """A file of VirtualServer documents cannot be used; the message names where and why."""


def load(text: str, *, source: str) -> list[spec.VirtualServer]:
    """Return the VirtualServers in `text` (read from `source`, named in errors).

    Raises:
        DocumentError: on a syntax error, an invalid document (naming the document and the
            field path), or two documents claiming the same virtual service.
    """
    parsed = []
    for index, document in enumerate(_documents(text, source=source)):
        try:
            parsed.append(spec.parse(document))
        except spec.SpecError as error:
            raise DocumentError(f"{source}: {_describe(document, index)}: {error}") from None
    claims: dict[ServiceKey, str] = {}
    for vs in parsed:
        for key in vs.keys:
            if key in claims:
                raise DocumentError(f"{source}: {vs.id} and {claims[key]} both claim {key}: "
                                    "a VIP + port + protocol belongs to one VirtualServer")
            claims[key] = vs.id
    return parsed


def desired_table(servers: list[spec.VirtualServer]) -> dict[ServiceKey, VirtualService]:
    """Return the IPVS table that static-address VirtualServers ask for.

    Raises:
        DocumentError: when a VirtualServer is backed by a Service (that needs a cluster).
    """
    result: dict[ServiceKey, VirtualService] = {}
    for vs in servers:
        if isinstance(vs.backend, spec.ServiceBackend):
            raise DocumentError(
                f"{vs.id}: spec.backend.service needs the controller to resolve endpoints; "
                "without a cluster use spec.backend.addresses"
            )
        for service in spec.services(vs, vs.backend):
            result[service.key] = service
    return result


def _documents(text: str, *, source: str) -> Iterator[Mapping[str, Any]]:
    raw: list[Any] | None = None
    if text.lstrip().startswith(("{", "[")):
        # On failure it may be a YAML stream of flow-style documents (`{...}` `---` `{...}`).
        with contextlib.suppress(json.JSONDecodeError):
            raw = [json.loads(text)]
    if raw is None:
        # Imported only for YAML: PyYAML's import costs more than the CLI's own modules, and
        # a machine-written bulk file is JSON.
        import yaml

        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml is ~10x faster
        try:
            raw = list(yaml.load_all(text, Loader=loader))
        except yaml.YAMLError as error:
            raise DocumentError(f"{source}: not valid YAML or JSON: {error}") from None
    for index, document in enumerate(raw):
        if document is None:
            continue  # an empty document between `---` separators
        if isinstance(document, list):
            yield from document
        elif isinstance(document, Mapping) and document.get("kind") == "List":
            yield from document.get("items") or []
        elif isinstance(document, Mapping):
            yield document
        else:
            raise DocumentError(f"{source}: document {index + 1} is not an object")


def _describe(document: object, index: int) -> str:
    if isinstance(document, Mapping):
        meta = document.get("metadata")
        if isinstance(meta, Mapping) and meta.get("name"):
            return f"VirtualServer {meta.get('namespace') or 'default'}/{meta['name']}"
    return f"document {index + 1}"
