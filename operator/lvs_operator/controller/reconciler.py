"""`lvs-operator controller`: keep every VirtualServer's status true to its backend.

The glue over the pure `resolve`, `conflicts` and `status`. Event-driven, no polling:
- informers (list, then watch, as client-go's do) keep VirtualServers, Services and
  EndpointSlices in memory, in compact form; nothing is computed before all three have
  listed, so a (re)started controller never acts on a partial view;
- each change is mapped to the VirtualServers it concerns (a Service or EndpointSlice to the
  VirtualServers whose backend it is; a VirtualServer to itself and to those it contests a
  VIP:port with) and queued;
- a queue reconciles one VirtualServer at a time per object, coalescing bursts: compute the
  status, compare, and only if it differs apply it (server-side apply of the fields this
  controller owns, on the status subresource, with a resourceVersion precondition: a
  conflict re-reads the object and starts over). Events are posted for transitions.

Why not kopf's own watching and indexes: kopf holds every handler back until all indexes
are filled, and that wait costs time quadratic in the number of indexed objects (measured:
3,000 objects, 80 s before the first handler; without indexes, 0.5 s). Services and
EndpointSlices are watched cluster-wide, so that number is the cluster's. kopf is the
runtime: credentials, start-up and clean-up, signals, and the Pod admission webhook.

Nothing is stored on the objects (no finalizer, no annotations), so a VirtualServer is
deleted at once; the agents withdraw it when it is gone. Every replica runs in full (warm
caches, the webhook), but only the holder of a coordination.k8s.io Lease writes statuses
and Events; a replica that takes the Lease over reconciles everything once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from lvs_operator.api import API_VERSION, GROUP, KIND, PLURAL, VERSION, conditions, conflicts, spec
from lvs_operator.api.conflicts import Claimant
from lvs_operator.controller import admission, report, resolve
from lvs_operator.controller.credentials import load_configuration
from lvs_operator.controller.errors import brief
from lvs_operator.controller.leader import Lease
from lvs_operator.controller.settings import Settings
from lvs_operator.model import ServiceKey

FIELD_MANAGER = "lvs-operator-controller"  # the server-side apply owner of our status fields
REPORTING_CONTROLLER = "lvs.dev/controller"  # who posts the Events
# Status writes in flight at once: enough to keep the API server busy without queueing
# hundreds of requests in front of it (it serves watches and the agents too).
CONCURRENCY = 8
APPLY_ATTEMPTS = 3  # resourceVersion conflicts in a row before the queue's backoff takes over
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds, after a failed reconcile or watch
LIST_PAGE = 500  # objects per list request: bounded answers, a few requests per thousand
# The API server ends a watch after this many seconds; the informer resumes it from the
# last resourceVersion (a half-open connection is noticed within that time).
WATCH_SECONDS = 300
REQUEST_SECONDS = 60.0  # the longest wait for any other answer

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of an object
VSKey = Key  # ... of a VirtualServer


@dataclass(frozen=True)
class Entry:
    """A VirtualServer as the controller keeps it in memory."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    created: str
    deleting: bool
    parsed: spec.VirtualServer | spec.SpecError
    status: Mapping[str, Any]

    @property
    def key(self) -> VSKey:
        return (self.namespace, self.name)

    @property
    def valid(self) -> spec.VirtualServer | None:
        """Return the parsed spec, or None if it is invalid."""
        return self.parsed if isinstance(self.parsed, spec.VirtualServer) else None

    def claimant(self) -> Claimant | None:
        """Return what this VirtualServer claims, or None if it claims nothing (invalid, or
        being deleted)."""
        vs = self.valid
        if vs is None or self.deleting:
            return None
        return Claimant.of(vs, created=self.created)


class Parser:
    """`spec.parse` once per object generation (the spec changes only with it)."""

    def __init__(self) -> None:
        self._parsed: dict[str, tuple[int, spec.VirtualServer | spec.SpecError]] = {}

    def parse(self, body: Mapping[str, Any]) -> spec.VirtualServer | spec.SpecError:
        """Return the parsed spec of a VirtualServer `body`, or why it is invalid."""
        meta = body.get("metadata") or {}
        uid, generation = str(meta.get("uid", "")), int(meta.get("generation") or 0)
        cached = self._parsed.get(uid)
        if cached is not None and cached[0] == generation:
            return cached[1]
        try:
            parsed: spec.VirtualServer | spec.SpecError = spec.parse(
                body, default_namespace=str(meta.get("namespace", "")))
        except spec.SpecError as error:
            parsed = error
        self._parsed[uid] = (generation, parsed)
        return parsed

    def entry(self, body: Mapping[str, Any]) -> Entry:
        """Return the entry the informer keeps for a VirtualServer `body` (fresh from JSON
        and never changed afterwards: parts of it are kept, not copied)."""
        meta = body.get("metadata") or {}
        return Entry(
            namespace=str(meta.get("namespace", "")), name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")), generation=int(meta.get("generation") or 0),
            resource_version=str(meta.get("resourceVersion", "")),
            created=str(meta.get("creationTimestamp", "")),
            deleting=bool(meta.get("deletionTimestamp")),
            parsed=self.parse(body), status=body.get("status") or {})

    def forget(self, uid: str) -> None:
        """Drop what is cached for a deleted object."""
        self._parsed.pop(uid, None)


def compact_service(body: Mapping[str, Any]) -> dict[str, Any]:
    """Return what the controller (and the webhook) need of a Service (`body` is fresh from
    JSON and never changed: parts of it are kept, not copied)."""
    svc = body.get("spec") or {}
    return {"spec": {k: svc[k] for k in ("type", "ports", "selector") if k in svc}}


def compact_slice(body: Mapping[str, Any]) -> dict[str, Any]:
    """Return what `resolve` needs of an EndpointSlice (a fraction of its size), and the
    name of its Service."""
    endpoints = []
    for endpoint in body.get("endpoints") or []:
        ref = endpoint.get("targetRef") or {}
        endpoints.append({
            "addresses": list(endpoint.get("addresses") or [])[:1],
            "conditions": dict(endpoint.get("conditions") or {}),
            "nodeName": endpoint.get("nodeName"),
            "targetRef": {"kind": ref.get("kind"), "name": ref.get("name")},
        })
    return {"service": resolve.service_of(body), "addressType": body.get("addressType"),
            "ports": body.get("ports") or [], "endpoints": endpoints}


class Informer:
    """One resource kind in memory, kept by list and watch (what client-go's informers do).

    `items` maps (namespace, name) to `compact(object)`. `synced` is set once every path has
    been listed. After that, each change calls `on_change(key, old, new)` (None for absent):
    watch events, and the differences a relist finds (after a 410 Gone, or when a watch
    could not be resumed). Bookmarks keep the resourceVersion fresh, so a reconnect rarely
    needs a relist.
    """

    def __init__(self, api: client.ApiClient, *, kind: str, paths: Iterable[str],
                 compact: Callable[[Mapping[str, Any]], Any],
                 on_change: Callable[[Key, Any, Any], None]) -> None:
        self.api = api
        self.kind = kind
        self.paths = tuple(paths)
        self.compact = compact
        self.on_change = on_change
        self.items: dict[Key, Any] = {}
        self.synced = asyncio.Event()
        self._listed: set[str] = set()

    async def run(self) -> None:
        """List and watch every path until cancelled."""
        await asyncio.gather(*(self._run(path) for path in self.paths))

    async def _run(self, path: str) -> None:
        failures = 0
        version = ""
        while True:
            try:
                if not version:
                    version = await self._list(path)
                version = await self._watch(path, version)
                failures = 0
            except _Gone:
                version = ""  # too old to resume: list again
            except Exception as error:
                if isinstance(error, ApiException | aiohttp.ClientError | TimeoutError
                              | ValueError):
                    log.warning("watching %s: %s", self.kind, brief(error))
                else:  # a bug: say where, and start over from a fresh list
                    log.exception("watching %s", self.kind)
                    version = ""
                await asyncio.sleep(RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)])
                failures += 1

    async def _list(self, path: str) -> str:
        """Replace this path's items with a fresh list; return its resourceVersion."""
        found: dict[Key, Any] = {}
        token = ""
        while True:
            page = await self._get(path, {"limit": LIST_PAGE,
                                          **({"continue": token} if token else {})})
            for obj in page.get("items") or []:
                found[_key(obj)] = self.compact(obj)
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                break
        first = path not in self._listed
        namespace = _namespace_of(path)
        old = {k: v for k, v in self.items.items() if namespace is None or k[0] == namespace}
        for key in old.keys() - found.keys():
            del self.items[key]
        self.items.update(found)
        self._listed.add(path)
        if len(self._listed) == len(self.paths):
            self.synced.set()
        if not first:  # a relist: say what changed while nobody watched
            for key in old.keys() | found.keys():
                if old.get(key) != found.get(key):
                    self.on_change(key, old.get(key), found.get(key))
        return str(page["metadata"]["resourceVersion"])

    async def _watch(self, path: str, version: str) -> str:
        """Apply watch events from `version` on; return the last resourceVersion seen when
        the server ends the watch. Raises _Gone when `version` is too old."""
        query = {"watch": "true", "resourceVersion": version, "allowWatchBookmarks": "true",
                 "timeoutSeconds": str(WATCH_SECONDS)}
        response = await self._request(path, query, timeout=WATCH_SECONDS + 30)
        async with response:
            async for line in response.content:
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                key = _key(obj)
                old = self.items.get(key)
                new = None if kind == "DELETED" else self.compact(obj)
                if new is None:
                    self.items.pop(key, None)
                else:
                    self.items[key] = new
                self.on_change(key, old, new)
        return version

    async def _get(self, path: str, query: Mapping[str, Any]) -> Any:
        response = await self._request(path, query, timeout=REQUEST_SECONDS)
        async with response:
            return json.loads(await response.read())

    async def _request(self, path: str, query: Mapping[str, Any], *,
                       timeout: float) -> aiohttp.ClientResponse:
        """Send a GET with the client's credentials (and token refresh); return the open
        response. Raises _Gone for 410, ApiException for any other status but 2xx."""
        method, url, headers, _, _ = await self.api.param_serialize(
            "GET", path, query_params=list(query.items()), auth_settings=["BearerToken"],
            header_params={"Accept": "application/json"})
        answer = await self.api.call_api(method, url, header_params=headers,
                                         _request_timeout=timeout)
        response: aiohttp.ClientResponse = answer.response
        if response.status == 410:
            response.release()
            raise _Gone()
        if not 200 <= response.status < 300:
            async with response:
                body = (await response.read()).decode(errors="replace")
            raise ApiException(status=response.status, reason=body[:300])
        return response


class _Gone(Exception):
    """The resourceVersion to watch from is too old (HTTP 410): list again."""


def collections(prefix: str, plural: str, namespaces: Iterable[str]) -> list[str]:
    """Return the API paths to list and watch `plural` under `prefix` (e.g. /api/v1): one
    per namespace, or the cluster-wide one when `namespaces` is empty."""
    return [f"{prefix}/namespaces/{ns}/{plural}" for ns in namespaces] or [f"{prefix}/{plural}"]


def _update(index: dict[Any, set[Key]], at: Any, key: Key, *, add: bool) -> None:
    """Add `key` to, or remove it from, the set `index[at]` (dropping an emptied set)."""
    if add:
        index.setdefault(at, set()).add(key)
    elif at in index:
        index[at].discard(key)
        if not index[at]:
            del index[at]


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


def _namespace_of(path: str) -> str | None:
    parts = path.split("/")
    return parts[parts.index("namespaces") + 1] if "namespaces" in parts else None


class Controller:
    """The reconciler: informers in, statuses and Events out, while it holds the Lease."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.parser = Parser()
        self.leading = False
        # Filled by start(): informers for VirtualServers, Services, EndpointSlices.
        self.informers: dict[str, Informer] = {}
        # Reverse maps kept from the informers' changes, to find what a change concerns.
        self.claims: dict[ServiceKey, set[VSKey]] = {}
        self.backends: dict[Key, set[VSKey]] = {}  # Service -> VirtualServers using it
        self.slices_of: dict[Key, set[Key]] = {}  # Service -> its EndpointSlices
        # The conflicts found by the last reconcile of each VirtualServer: key -> holder id.
        self.conflicted: dict[VSKey, str] = {}
        self._pending: set[VSKey] = set()
        self._running: dict[VSKey, asyncio.Task[None]] = {}
        self._failures: dict[VSKey, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(CONCURRENCY)
        self._synced = asyncio.Event()
        self._api: client.ApiClient | None = None
        self._objects: client.CustomObjectsApi | None = None
        self._events: client.EventsV1Api | None = None
        self._core: client.CoreV1Api | None = None
        self._lease: Lease | None = None
        # (uid, generation) of the VirtualServers whose selected pods were checked for the
        # real-server setup (with the webhook on): once per generation and controller life.
        self._pods_checked: set[tuple[str, int]] = set()

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to the API server, start the informers and campaign for the Lease."""
        self._api = client.ApiClient(await load_configuration(self.settings.kubeconfig))
        # Made here, not on first use: the client imports each API's module lazily, which
        # blocks the event loop for a moment.
        self._objects = client.CustomObjectsApi(self._api)
        self._events = client.EventsV1Api(self._api)
        if self.settings.webhook is not None:
            self._core = client.CoreV1Api(self._api)
        self._lease = Lease(client.CoordinationV1Api(self._api), self.settings)
        kinds = {
            "virtualservers": (f"/apis/{GROUP}/{VERSION}", PLURAL, self.parser.entry,
                               self.virtualserver_changed),
            "services": ("/api/v1", "services", compact_service, self.service_changed),
            "endpointslices": ("/apis/discovery.k8s.io/v1", "endpointslices", compact_slice,
                               self.slice_changed),
        }
        for kind, (prefix, plural, compact, on_change) in kinds.items():
            informer = Informer(self._api, kind=kind, compact=compact, on_change=on_change,
                                paths=collections(prefix, plural, self.settings.namespaces))
            self.informers[kind] = informer
            self._spawn(informer.run())
        self._spawn(self._sync())
        self._spawn(self._lease.run(self._lead))

    async def stop(self) -> None:
        """Release the Lease (so another replica takes over at once) and disconnect."""
        for task in list(self._background) + list(self._running.values()):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._background, *self._running.values(),
                                 return_exceptions=True)
        if self._lease is not None and self.leading:
            self.leading = False
            await self._lease.release()
        if self._api is not None:
            await self._api.close()  # type: ignore[no-untyped-call]

    async def _sync(self) -> None:
        await asyncio.gather(*(i.synced.wait() for i in self.informers.values()))
        for key, entry in self._vs.items():
            self._index(key, None, entry)
        for key, compact in self.informers["endpointslices"].items.items():
            self._index_slice(key, None, compact)
        log.info("listed %s", ", ".join(f"{len(i.items)} {kind}"
                                         for kind, i in self.informers.items()))
        self._synced.set()
        self._reconcile_all()

    def _lead(self, leading: bool) -> None:
        self.leading = leading
        if leading:
            log.info("leading (Lease %s/%s as %s): reconciling every VirtualServer",
                     self.settings.lease_namespace, self.settings.lease_name,
                     self.settings.identity)
            self._reconcile_all()
        else:
            log.warning("lost the Lease %s/%s: no longer writing status",
                        self.settings.lease_namespace, self.settings.lease_name)
            self.conflicted.clear()

    def _reconcile_all(self) -> None:
        for key in list(self._vs):
            self.enqueue(key)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def _vs(self) -> dict[Key, Entry]:
        informer = self.informers.get("virtualservers")
        return informer.items if informer is not None else {}

    # --- what changed -> what to reconcile ------------------------------------------------------

    def virtualserver_changed(self, key: VSKey, old: Entry | None, new: Entry | None) -> None:
        """Queue a changed VirtualServer and those whose conflicts it may change."""
        if new is None:
            self.conflicted.pop(key, None)
            self._failures.pop(key, None)
            if old is not None:
                self.parser.forget(old.uid)
        if self._synced.is_set():
            self._index(key, old, new)
        if new is not None:
            self.enqueue(key)
        for entry in (old, new):
            claimant = entry.claimant() if entry is not None else None
            for claim in claimant.keys if claimant is not None else ():
                for other in list(self.claims.get(claim, ())):
                    self.enqueue(other)
        holder = f"{key[0]}/{key[1]}"
        for other, held_by in list(self.conflicted.items()):
            if held_by == holder:
                self.enqueue(other)

    def service_changed(self, key: Key, old: Any, new: Any) -> None:
        """Queue the VirtualServers whose backend is this Service."""
        self._backend_changed(key)

    def slice_changed(self, key: Key, old: Mapping[str, Any] | None,
                      new: Mapping[str, Any] | None) -> None:
        """Queue the VirtualServers whose backend is this EndpointSlice's Service."""
        if self._synced.is_set():
            self._index_slice(key, old, new)
        for compact in (old, new):
            service = compact.get("service") if compact else None
            if service:
                self._backend_changed((key[0], service))

    def _backend_changed(self, service: Key) -> None:
        for key in list(self.backends.get(service, ())):
            self.enqueue(key)

    def _index(self, key: VSKey, old: Entry | None, new: Entry | None) -> None:
        """Keep `claims` and `backends` in step with a VirtualServer's change."""
        for entry, add in ((old, False), (new, True)):
            claimant = entry.claimant() if entry is not None else None
            vs = entry.valid if entry is not None else None
            for claim in claimant.keys if claimant is not None else ():
                _update(self.claims, claim, key, add=add)
            if vs is not None and isinstance(vs.backend, spec.ServiceBackend):
                _update(self.backends, (vs.namespace, vs.backend.name), key, add=add)

    def _index_slice(self, key: Key, old: Mapping[str, Any] | None,
                     new: Mapping[str, Any] | None) -> None:
        """Keep `slices_of` in step with an EndpointSlice's change."""
        for compact, add in ((old, False), (new, True)):
            if compact and compact.get("service"):
                _update(self.slices_of, (key[0], compact["service"]), key, add=add)

    # --- the queue ------------------------------------------------------------------------------

    def enqueue(self, key: VSKey) -> None:
        """Reconcile `key` soon; while it is being reconciled, once more afterwards."""
        if not self.leading or not self._synced.is_set():
            return  # a new leader, and the end of the first lists, reconcile everything
        self._pending.add(key)
        if key not in self._running:
            self._running[key] = asyncio.create_task(self._work(key))

    async def _work(self, key: VSKey) -> None:
        try:
            while key in self._pending:
                self._pending.discard(key)
                async with self._limit:
                    try:
                        await self.reconcile(key)
                    except (ApiException, aiohttp.ClientError, TimeoutError,
                            RuntimeError) as error:
                        self._retry_later(key, error)
                    except Exception as error:  # a bug: say where, and keep the others going
                        log.exception("VirtualServer %s/%s: reconcile failed", *key)
                        self._retry_later(key, error)
                    else:
                        self._failures.pop(key, None)
        finally:
            del self._running[key]

    def _retry_later(self, key: VSKey, error: BaseException) -> None:
        failures = self._failures.get(key, 0)
        delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
        self._failures[key] = failures + 1
        log.warning("VirtualServer %s/%s: %s; retrying in %.0f s", *key, brief(error), delay)
        asyncio.get_running_loop().call_later(delay, self.enqueue, key)

    # --- one VirtualServer ----------------------------------------------------------------------

    async def reconcile(self, key: VSKey) -> None:
        """Bring the status of VirtualServer `key` up to date, writing only a difference.

        Raises:
            ApiException: when the API server refuses (other than a stale resourceVersion).
            RuntimeError: when the object kept changing under every attempt.
        """
        if not self._synced.is_set():
            return  # everything is queued once every informer has listed
        entry = self._entry(key)
        if entry is not None and not entry.deleting and self.leading:
            self._check_pods(entry)
        for _ in range(APPLY_ATTEMPTS):
            if entry is None or entry.deleting:
                return
            wanted = self._desired(entry)
            if not report.changed(entry.status, wanted) or not self.leading:
                return
            try:
                await self._apply(entry, wanted)
            except ApiException as error:
                if error.status == 404:
                    return
                if error.status != 409:
                    raise
                entry = await self._fetch(key)  # our copy was stale: read it, start over
                continue
            ready = next(c for c in wanted["conditions"] if c["type"] == conditions.READY)
            log.info("VirtualServer %s/%s: status written: Ready=%s %s, real servers %s",
                     *key, ready["status"], ready["reason"], wanted["ready"])
            for event in report.events(entry.status, wanted):
                # Posted on the side: an Event must not hold up the next status write.
                self._spawn(self._post(entry, event))
            return
        raise RuntimeError(f"it changed under each of {APPLY_ATTEMPTS} attempts")

    def _entry(self, key: VSKey) -> Entry | None:
        return self._vs.get(key)

    def _check_pods(self, entry: Entry) -> None:
        """Start a check for pods of a DR/Tunnel VirtualServer's Service that lack the
        real-server setup (created before the VirtualServer, or while the webhook was down):
        the webhook only sees new pods. Once per generation, and only with the webhook on."""
        vs = entry.valid
        if (self._core is None or vs is None or not isinstance(vs.backend, spec.ServiceBackend)
                or vs.forwarding not in admission.MODE_OF):
            return
        mark = (entry.uid, entry.generation)
        if mark not in self._pods_checked:
            self._pods_checked.add(mark)
            self._spawn(self._warn_pods(entry, vs, vs.backend.name))

    async def _warn_pods(self, entry: Entry, vs: spec.VirtualServer, service_name: str) -> None:
        """Post a Warning Event naming the pods that need a restart, if there are any."""
        assert self._core is not None and self._api is not None
        service = self.informers["services"].items.get((entry.namespace, service_name))
        selector = admission.service_selector(service)
        if selector is None:
            return
        try:
            listed = await self._core.list_namespaced_pod(
                entry.namespace, label_selector=admission.label_selector(selector))
        except (ApiException, aiohttp.ClientError, TimeoutError) as error:
            log.warning("VirtualServer %s/%s: cannot list its pods: %s", entry.namespace,
                        entry.name, brief(error))
            return
        # The typed objects back to the API's JSON shape, which `admission` reads.
        plain = self._api.sanitize_for_serialization(listed)  # type: ignore[no-untyped-call]
        pods = plain.get("items") or []
        lacking = admission.pods_lacking(vs, service, pods)
        if lacking:
            await self._post(entry, report.Event(
                type="Warning", reason="RealServerSetupMissing",
                message=admission.restart_message(entry.name, service_name, lacking)))

    def _desired(self, entry: Entry) -> dict[str, Any]:
        conflict = None
        resolution = None
        claimant = entry.claimant()
        if claimant is not None:
            conflict = conflicts.conflict(claimant, self._rivals(claimant))
        if conflict is not None:
            self.conflicted[entry.key] = conflict.holder
        else:
            self.conflicted.pop(entry.key, None)
            vs = entry.valid
            if vs is not None:
                resolution = self._resolve(vs)
        return report.desired(generation=entry.generation, vs=entry.parsed,
                              resolution=resolution, conflict=conflict,
                              directors=entry.status.get("directors") or {},
                              previous=entry.status, now=datetime.now(UTC))

    def _rivals(self, claimant: Claimant) -> list[Claimant]:
        keys = {other for key in claimant.keys for other in self.claims.get(key, ())}
        entries = [self._vs.get(key) for key in keys]
        return [c for c in (e.claimant() for e in entries if e is not None) if c is not None]

    def _resolve(self, vs: spec.VirtualServer) -> resolve.Resolution:
        if not isinstance(vs.backend, spec.ServiceBackend):
            return resolve.resolve(vs, None, ())
        where = (vs.namespace, vs.backend.name)
        slices = self.informers["endpointslices"].items
        return resolve.resolve(vs, self.informers["services"].items.get(where),
                               [slices[k] for k in self.slices_of.get(where, ()) if k in slices])

    async def _apply(self, entry: Entry, wanted: Mapping[str, Any]) -> None:
        body = {
            "apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": entry.name, "namespace": entry.namespace,
                         "resourceVersion": entry.resource_version},
            "status": wanted,
        }
        assert self._objects is not None
        await self._objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, entry.namespace, PLURAL, entry.name, body,
            field_manager=FIELD_MANAGER, force=True,
            _content_type="application/apply-patch+yaml")

    async def _fetch(self, key: VSKey) -> Entry | None:
        assert self._objects is not None
        try:
            body = await self._objects.get_namespaced_custom_object(
                GROUP, VERSION, key[0], PLURAL, key[1])
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        assert isinstance(body, Mapping)
        return self.parser.entry(body)

    async def _post(self, entry: Entry, event: report.Event) -> None:
        """Post `event` on the VirtualServer; a failure is logged, not retried (the status
        says it all)."""
        assert self._events is not None
        # Named like client-go's recorder does (the Events API refuses a generateName that
        # is not itself a valid name, such as "web.").
        name = f"{entry.name[:200]}.{time.time_ns():x}"
        body = client.EventsV1Event(
            metadata=client.V1ObjectMeta(name=name, namespace=entry.namespace),
            regarding=client.V1ObjectReference(
                api_version=API_VERSION, kind=KIND, name=entry.name,
                namespace=entry.namespace, uid=entry.uid),
            type=event.type, reason=event.reason, note=event.message[:1024],
            action="UpdateStatus", event_time=datetime.now(UTC),
            reporting_controller=REPORTING_CONTROLLER,
            reporting_instance=self.settings.identity[:128])
        try:
            await self._events.create_namespaced_event(entry.namespace, body)
        except (ApiException, aiohttp.ClientError, TimeoutError) as error:
            log.warning("VirtualServer %s/%s: cannot post Event %s: %s", entry.namespace,
                        entry.name, event.reason, brief(error))
