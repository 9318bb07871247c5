"""`LoadBalancers`: serve `type: LoadBalancer` Services, next to the `Controller`.

The glue over the pure `loadbalancer`. It shares the Controller's caches (the Service
reflector, VIPPools, VIPClaims, VirtualServers), its queue (a Service is queued as a
`ServiceRef`, so one Service is reconciled at a time) and its Lease (only the leader writes).
One reconcile of a served Service:

1. read its request (a bad annotation: a Warning Event naming it, and nothing changes:
   what runs keeps running);
2. per IP family, find its address in the VIPClaims (`loadbalancer.chosen`), else allocate
   one: POST a VIPClaim for the first free candidate; 409 means another writer (a former
   leader, a second controller) took it first: read it, and go on to the next candidate;
3. keep one VirtualServer per family, owned by the Service: created when missing,
   replaced whole when it differs from what the Service asks (a user's edit is put back;
   a replacement rather than a server-side apply, because an apply leaves alone the fields
   another manager added, such as a `weight` set by `kubectl edit`), deleted and created
   again when the address changed (`spec.vip` is immutable), deleted for families the
   Service no longer has and when the Service stops being served;
4. publish in `status.loadBalancer` the addresses whose VirtualServer the controller has
   not refused (a port conflict between sharers: a Warning Event, no address), only when
   that differs from what is there.

Claims are released by the Controller's `_settle`, which asks `wanted` whether a served
Service still has the address.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from lvs_operator.api import API_VERSION, PLURAL, claims, conditions, pools
from lvs_operator.controller import loadbalancer
from lvs_operator.controller.objects import Entry
from lvs_operator.controller.objects import update_index as _update
from lvs_operator.kube import client, watch
from lvs_operator.model import IPAddress

if TYPE_CHECKING:
    from lvs_operator.controller.reconciler import Controller

Key = watch.Key
# Candidates tried in one reconcile before giving up until the next (each 409 is a
# round trip; racing allocators lose a few at most).
MAX_ATTEMPTS = 32
# What `_keep` says of a VirtualServer not looked at yet by the controller.
PENDING = ("", "")
# The Ready reasons of a generated VirtualServer for which its address is not published.
REFUSED = frozenset({conditions.CONFLICT, conditions.INVALID_SPEC, claims.VIP_IN_USE,
                     *pools.REASONS})

log = logging.getLogger(__name__)


class ServiceRef(NamedTuple):
    """A Service in the Controller's queue (a VirtualServer is queued by its `Key`)."""

    service: Key

    def __str__(self) -> str:
        return f"Service {self.service}"


class LoadBalancers:
    """The LoadBalancer Services of one Controller (see the module docstring)."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller
        settings = controller.settings
        self.load_balancer_class = settings.load_balancer_class
        self.default = settings.load_balancer_default
        # Claim addresses by (namespace, "service:NAME" or "key:SHARING-KEY").
        self._claimed: dict[tuple[str, str], set[IPAddress]] = {}
        # Served Services by (namespace, sharing key), and by uid (for their VirtualServers).
        self._sharers: dict[tuple[str, str], set[Key]] = {}
        self._uids: dict[str, Key] = {}
        self._waiting: set[Key] = set()  # Services that found no free address
        self._warned: dict[Key, set[tuple[str, str]]] = {}  # Warnings last posted
        # status.loadBalancer writes whose echo has not come through the watch: what was
        # written, over which resourceVersion (without it, every reconcile until the echo
        # comes would write the same again).
        self._written: dict[Key, tuple[Any, str]] = {}

    # --- what changed -> which Services -----------------------------------------------------

    def served(self, service: Mapping[str, Any] | None) -> bool:
        """Return whether `service` (compact) is one this controller serves."""
        return service is not None and loadbalancer.served(
            service, load_balancer_class=self.load_balancer_class, default=self.default)

    def service_changed(self, key: Key, old: Any, new: Any) -> None:
        """Index a Service's change; queue it when it is, or was, served."""
        for compact, add in ((old, False), (new, True)):
            if self.served(compact):
                meta = compact.get("metadata") or {}
                sharing = (meta.get("annotations") or {}).get(loadbalancer.SHARING_KEY)
                if sharing:
                    _update(self._sharers, (key.namespace, sharing), key, add=add)
                if meta.get("uid"):
                    if add:
                        self._uids[meta["uid"]] = key
                    else:
                        self._uids.pop(meta["uid"], None)
        if self.served(old) or self.served(new):
            self.c.enqueue(ServiceRef(key))
        if self.served(old) and not self.served(new):
            self._warned.pop(key, None)
            self._written.pop(key, None)
            self._waiting.discard(key)
        if self.served(old):
            # It may no longer want an address it had (gone, another family or address).
            for address in self._addresses(key.namespace, key.name, _sharing(old)):
                self.c._settle_soon(address)

    def virtualserver_changed(self, old: Entry | None, new: Entry | None) -> None:
        """Queue the Service that owns a changed VirtualServer."""
        for entry in (old, new):
            owner = self._uids.get(entry.owner) if entry is not None and entry.owner else None
            if owner is not None:
                self.c.enqueue(ServiceRef(owner))

    def claim_changed(self, old: claims.Claim | None, new: claims.Claim | None) -> None:
        """Index a claim's change; queue the Services it may concern (and, when an address
        came free, those that found none)."""
        for claim, add in ((old, False), (new, True)):
            if claim is None:
                continue
            for at in _claim_keys(claim):
                _update(self._claimed, at, claim.address, add=add)
            for service in self._interested(claim):
                self.c.enqueue(ServiceRef(service))
        if old is not None and new is None:
            for service in list(self._waiting):
                self.c.enqueue(ServiceRef(service))

    def reconcile_all(self) -> None:
        """Queue every served Service (a new leader, a pool change)."""
        for reflector in self.c.caches.get("services", {}).values():
            for key, compact in reflector.snapshot().items():
                if self.served(compact):
                    self.c.enqueue(ServiceRef(key))

    def wanted(self, claim: claims.Claim | None) -> bool:
        """Return whether a served Service of `claim`'s namespace has its address."""
        if claim is None:
            return False
        for key in self._interested(claim):
            service = self.c._cached("services", key)
            if not self.served(service):
                continue
            try:
                req = loadbalancer.request(service)
            except loadbalancer.AnnotationError:
                # Refused for now, but it keeps what it had: an edit by mistake must not
                # free the address for others to take.
                if claim.service == key.name:
                    return True
                continue
            if loadbalancer.chosen(req, claim.address.version,
                                   self._claims_for(req)) == claim.address:
                return True
        return False

    def _interested(self, claim: claims.Claim) -> set[Key]:
        found = set(self._sharers.get((claim.namespace, claim.sharing_key), ())) \
            if claim.sharing_key else set()
        if claim.service:
            found.add(Key(claim.namespace, claim.service))
        return found

    def _addresses(self, namespace: str, name: str, sharing: str) -> set[IPAddress]:
        found = set(self._claimed.get((namespace, f"service:{name}"), ()))
        if sharing:
            found |= self._claimed.get((namespace, f"key:{sharing}"), set())
        return found

    def _claims_for(self, req: loadbalancer.Request) -> list[claims.Claim]:
        addresses = self._addresses(req.namespace, req.name, req.sharing_key)
        addresses.update(req.addresses.values())
        found = (self.c._claim(a) for a in addresses)
        return [c for c in found if c is not None]

    # --- one Service --------------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        """Bring Service `key`'s addresses, VirtualServers and status up to date.

        Raises:
            kube.client.ApiError: when the API server refuses or does not answer.
        """
        service = self.c._cached("services", key)
        if not self.served(service):
            for family in (4, 6):
                await self._delete_generated(key, family, uid=None)
            return
        try:
            req = loadbalancer.request(service)
        except loadbalancer.AnnotationError as error:
            await self._warn(key, service, [(loadbalancer.INVALID_ANNOTATION, str(error))])
            return
        warnings: list[tuple[str, str]] = []
        addresses: dict[int, IPAddress] = {}
        for family in req.families:
            try:
                address = await self._address(req, family)
            except loadbalancer.AllocationError as error:
                warnings.append((error.reason, str(error)))
                continue
            addresses[family] = address
        if len(addresses) == len(req.families):
            self._waiting.discard(key)
        else:
            self._waiting.add(key)
        published: dict[int, IPAddress] = {}
        shown = _shown(service)
        for family in (4, 6):
            if family not in addresses:
                # A family the Service no longer has (or has no address for yet).
                await self._delete_generated(key, family, uid=req.uid)
                continue
            why = await self._keep(req, family, addresses[family])
            if why == PENDING:
                # Its VirtualServer is new or changed and not looked at yet: what is
                # published for it stays as it is (neither shown early nor taken back).
                if addresses[family] in shown:
                    published[family] = addresses[family]
            elif why:
                warnings.append(why)
            else:
                published[family] = addresses[family]
        await self._publish(req, service, published)
        await self._warn(key, service, warnings)

    async def _address(self, req: loadbalancer.Request, family: int) -> IPAddress:
        """Return the address `req`'s Service has for `family`, allocating one if need be.

        Raises:
            loadbalancer.AllocationError: when it can have none.
            kube.client.ApiError: when the API server refuses or does not answer.
        """
        found = loadbalancer.chosen(req, family, self._claims_for(req))
        if found is not None:
            return found
        wanted = req.addresses.get(family)
        if wanted is not None:
            claim = self.c._claim(wanted)
            if claim is not None:  # chosen() refused it
                raise loadbalancer.AllocationError(loadbalancer.ADDRESS_NOT_ALLOWED,
                                                   loadbalancer.refusal(req, claim))
            verdict = self._admit(req, family, wanted)
            if not verdict.allowed:
                raise loadbalancer.AllocationError(
                    loadbalancer.ADDRESS_NOT_ALLOWED,
                    f"{req.requested_by}: {verdict.message.removeprefix('spec.vip: ')}")
            candidates: Iterable[IPAddress] = [wanted]
        else:
            labels = self.c._namespace_labels(req.namespace)
            source = loadbalancer.sources(req, family, self.c._pool_list(), labels)
            candidates = (a for a, _ in loadbalancer.free(source, family, _Taken(self.c)))
        for tried, address in enumerate(candidates):
            if tried >= MAX_ATTEMPTS:
                raise client.ApiError(409, f"{MAX_ATTEMPTS} addresses were taken by others "
                                      "as they were tried: trying again")
            if await self._claim(req, family, address):
                return address
            if wanted is not None:  # another Service took it first
                taken = self.c._claim(wanted)
                raise loadbalancer.AllocationError(
                    loadbalancer.ADDRESS_NOT_ALLOWED,
                    loadbalancer.refusal(req, taken) if taken else f"{wanted}: taken")
        where = f"VIPPool {req.pool}" if req.pool else "the autoAssign VIPPools"
        raise loadbalancer.AllocationError(
            loadbalancer.POOL_EXHAUSTED,
            f"{where} of namespace {req.namespace} have no free "
            f"{loadbalancer.FAMILY_NAMES[family]} address left")

    async def _claim(self, req: loadbalancer.Request, family: int, address: IPAddress
                     ) -> bool:
        """Create the VIPClaim of `address` for `req`'s Service; return whether it has it
        (False: another writer claimed it for someone else first)."""
        verdict = self._admit(req, family, address)
        if verdict.vs is None:
            return False
        claim = claims.Claim(address, req.namespace, req.sharing_key, verdict.vs.directors,
                             verdict.pool, service=req.name)
        try:
            stored = await self.c._write_claim("create", claim)
        except client.ApiError as error:
            if error.status != 409:
                raise
            stored = await self.c._read_claim(address)
            self.c._claims_written[address] = stored
            # True: the same Service, allocated by a second controller.
            return stored is not None and loadbalancer.owns(req, stored)
        self.c._claims_written[address] = stored
        self.claim_changed(None, stored)
        log.info("Service %s/%s: %s allocated from VIPPool %s", req.namespace, req.name,
                 address, verdict.pool)
        await self._event(req.namespace, req.name, req.uid, "Normal", "AddressAllocated",
                          f"{address} allocated from VIPPool {verdict.pool}")
        return True

    def _admit(self, req: loadbalancer.Request, family: int, address: IPAddress
               ) -> pools.Verdict:
        vs = loadbalancer.parse(req, family, address)
        return pools.admit(vs, self.c._pool_list(), self.c._namespace_labels(req.namespace))

    async def _keep(self, req: loadbalancer.Request, family: int, address: IPAddress
                    ) -> tuple[str, str] | None:
        """Create or put back the VirtualServer of `family`; return a Warning to post when it
        cannot be kept, or is refused (its address is then not published)."""
        name = req.vs_name(family)
        entry = self.c.virtualservers.get(Key(req.namespace, name))
        if entry is not None and entry.owner != req.uid:
            return ("VirtualServerExists", f"VirtualServer {name} exists and is not this "
                    "Service's: rename or delete it, and the controller creates its own")
        document = loadbalancer.virtual_server(req, family, address)
        wanted = loadbalancer.parse(req, family, address)
        if entry is not None and entry.valid is not None and entry.valid.vip != address:
            await self._delete(entry, "its address changed")
            entry = None
        if entry is None:
            await self._write("POST", req.namespace, "", document)
            await self._event(req.namespace, req.name, req.uid, "Normal", "VirtualServerCreated",
                              f"VirtualServer {name} created for {address}")
            return PENDING
        if entry.parsed != wanted:
            await self._replace(req, document)
            return PENDING
        ready = next((c for c in entry.status.get("conditions") or []
                      if c.get("type") == conditions.READY), None)
        if entry.status.get("observedGeneration") != entry.generation or ready is None:
            return PENDING  # not looked at yet
        if ready.get("status") != "True" and ready.get("reason") in REFUSED:
            return (str(ready["reason"]), f"VirtualServer {name}: {ready.get('message', '')}")
        return None

    async def _replace(self, req: loadbalancer.Request, document: dict[str, Any]) -> None:
        """Put the VirtualServer back as `document` says (its metadata kept but for what the
        controller sets), with the read resourceVersion as precondition."""
        name = document["metadata"]["name"]
        assert self.c.api is not None
        path = f"/apis/{API_VERSION}/namespaces/{req.namespace}/{PLURAL}/{name}"
        stored = await self.c.call(self.c.api.request, "GET", path)
        meta = dict(stored.get("metadata") or {})
        meta["labels"] = {**(meta.get("labels") or {}), **document["metadata"]["labels"]}
        meta["ownerReferences"] = document["metadata"]["ownerReferences"]
        await self._write("PUT", req.namespace, name, {**document, "metadata": meta})
        log.info("Service %s/%s: VirtualServer %s put back", req.namespace, req.name, name)
        await self._event(req.namespace, req.name, req.uid, "Normal", "VirtualServerUpdated",
                          f"VirtualServer {name} set to what the Service asks (an edit of it "
                          "is put back; change the Service's annotations instead)")

    async def _write(self, method: str, namespace: str, name: str, body: Any) -> None:
        assert self.c.api is not None
        path = f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}" + (f"/{name}" if name
                                                                        else "")
        await self.c.call(self.c.api.request, method, path, body=body,
                          query=[("fieldManager", self.c.field_manager)])

    async def _delete_generated(self, key: Key, family: int, *, uid: str | None) -> None:
        """Delete the VirtualServer of `family` generated for Service `key` (`uid`: of that
        Service, served; None: it is gone or no longer served, and its uid no longer known:
        then any Service owner but another served Service's)."""
        entry = self.c.virtualservers.get(Key(key.namespace, f"{key.name}-ipv{family}"))
        if entry is None or not entry.owner:
            return
        if uid is not None and entry.owner != uid:
            return
        if uid is None and self._uids.get(entry.owner, key) != key:
            return
        await self._delete(entry, "the Service is no longer served" if uid is None
                           else f"the Service has no IPv{family} address")

    async def _delete(self, entry: Entry, why: str) -> None:
        assert self.c.api is not None
        try:
            await self.c.call(
                self.c.api.request, "DELETE",
                f"/apis/{API_VERSION}/namespaces/{entry.namespace}/{PLURAL}/{entry.name}",
                body={"preconditions": {"uid": entry.uid}})
        except client.ApiError as error:
            if error.status not in (404, 409):
                raise
            return
        log.info("VirtualServer %s deleted: %s", entry.key, why)

    async def _publish(self, req: loadbalancer.Request, service: Mapping[str, Any],
                       addresses: Mapping[int, IPAddress]) -> None:
        """Write `status.loadBalancer` when it differs from what the Service has."""
        wanted = loadbalancer.load_balancer_status(req.families, addresses)
        current = (service.get("status") or {}).get("loadBalancer") or {}
        key = Key(req.namespace, req.name)
        version = str((service.get("metadata") or {}).get("resourceVersion") or "")
        if (current.get("ingress") or []) == (wanted.get("ingress") or []) or \
                self._written.get(key) == (wanted.get("ingress"), version):
            return
        assert self.c.api is not None
        await self.c.call(
            self.c.api.request, "PATCH",
            f"/api/v1/namespaces/{req.namespace}/services/{req.name}/status",
            body={"status": {"loadBalancer": {"ingress": wanted.get("ingress")}}},
            content_type="application/merge-patch+json",
            query=[("fieldManager", self.c.field_manager)])
        self._written[key] = (wanted.get("ingress"), version)
        shown = ", ".join(i["ip"] for i in wanted.get("ingress") or []) or "none"
        log.info("Service %s/%s: status.loadBalancer: %s", req.namespace, req.name, shown)

    async def _warn(self, key: Key, service: Mapping[str, Any],
                    warnings: list[tuple[str, str]]) -> None:
        """Post the Warnings not posted at the last reconcile of this Service."""
        said = {w for w in warnings if w[0]}
        before = self._warned.get(key, set())
        self._warned[key] = said
        uid = str((service.get("metadata") or {}).get("uid", ""))
        for reason, message in sorted(said - before):
            log.warning("Service %s: %s: %s", key, reason, message)
            await self._event(key.namespace, key.name, uid, "Warning", reason, message)

    async def _event(self, namespace: str, name: str, uid: str, type: str, reason: str,
                     message: str) -> None:
        await self.c._post_event(
            {"apiVersion": "v1", "kind": "Service", "name": name, "namespace": namespace,
             "uid": uid}, type=type, reason=reason, message=message, action="Allocate")


class _Taken:
    """The addresses that are not free: claimed, or a VirtualServer's VIP."""

    def __init__(self, controller: Controller) -> None:
        self.c = controller

    def __contains__(self, address: object) -> bool:
        if not isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return False
        return bool(self.c.by_vip.get(address)) or self.c._claim(address) is not None


def _shown(service: Mapping[str, Any]) -> set[IPAddress]:
    """Return the addresses the Service's status.loadBalancer shows now."""
    shown = set()
    for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") \
            or []:
        try:
            shown.add(ipaddress.ip_address(str(ingress.get("ip"))))
        except ValueError:
            continue
    return shown


def _claim_keys(claim: claims.Claim) -> list[tuple[str, str]]:
    found = []
    if claim.service:
        found.append((claim.namespace, f"service:{claim.service}"))
    if claim.sharing_key:
        found.append((claim.namespace, f"key:{claim.sharing_key}"))
    return found


def _sharing(compact: Mapping[str, Any]) -> str:
    return str(((compact.get("metadata") or {}).get("annotations") or {})
               .get(loadbalancer.SHARING_KEY) or "")

