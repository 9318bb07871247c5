"""The `Controller`: keep every VirtualServer's status true to its backend.

The glue over the pure `resolve`, `conflicts` and `report`. Event-driven, no polling:
- VirtualServers reach it through kopf (`handlers`: an `@kopf.on.event` handler calls
  `virtualserver_event`), Services and EndpointSlices through `kube.watch` reflectors, one
  thread each, in compact form (`objects`); nothing is computed before everything has been
  listed once, so a (re)started controller never acts on a partial view (kopf says nothing
  about the end of its first list: the controller lists VirtualServers once itself);
- each change is mapped to the VirtualServers it concerns (a Service or EndpointSlice to the
  VirtualServers whose backend it is; a VirtualServer to itself and to those it contests a
  VIP:port with) and queued;
- VIP pools and ownership (deny by default): a VirtualServer its pools refuse
  (`pools.admit`) or whose VIP another namespace owns (`claims.check`) is Ready=False with
  no real servers; before a VirtualServer's status is computed its VIP's VIPClaim is settled
  (`_settle`: granted to the oldest eligible namespace, kept while it uses the VIP, handed to
  a sharer or released), one write per VIP at a time, only by the leader;
- a queue reconciles one VirtualServer at a time per object, coalescing bursts: compute the
  status, compare, and only if it differs apply it (server-side apply of the fields this
  controller owns, on the status subresource, with a resourceVersion precondition: a
  conflict re-reads the object and starts over). Events are posted for transitions.

Why Services and EndpointSlices do not come through kopf too: they are watched cluster-wide,
so their number is the cluster's, and kopf runs a worker task and its whole handler machinery
per object. Measured side by side against one API server (tests/bench/cluster/
test_watch_paths.py: 1,000 Services + 1,000 EndpointSlices x 20 endpoints, a loaded 2-core
machine): the initial list took kopf 3.1-7.5 s against 0.8-1.3 s for a reflector (3-10x) and
6-9x the CPU (0.7-0.9 ms per object against 0.1 ms), whatever kopf's settings; an endpoint
flip reached kopf's handler at 1.2-1.5x the reflector's p99. VirtualServers are few, and
kopf serves them well.

The event loop never blocks on the network: API calls run in a small thread pool on the
one synchronous client (`kube.client`) that the agent uses too, at most `CONCURRENCY` status
writes at once. Reflector threads hand their changes to the loop (`call_soon_threadsafe`).

Nothing is stored on the objects (no finalizer, no annotations), so a VirtualServer is
deleted at once; the agents withdraw it when it is gone. Every replica runs in full (warm
caches, the webhook), but only the holder of a coordination.k8s.io Lease writes statuses
and Events (`leader`); a replica that takes the Lease over reconciles everything once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from lvs_operator.api import API_VERSION, KIND, PLURAL, claims, conditions, conflicts, pools, spec
from lvs_operator.api.conflicts import Claimant
from lvs_operator.controller import admission, report, resolve
from lvs_operator.controller.balancers import LoadBalancers, ServiceRef
from lvs_operator.controller.leader import Leader
from lvs_operator.controller.objects import (
    Entry,
    Parser,
    compact_claim,
    compact_pool,
    compact_service,
    compact_slice,
    namespace_labels,
)
from lvs_operator.controller.objects import update_index as _update
from lvs_operator.controller.settings import Settings
from lvs_operator.kube import client, events, watch
from lvs_operator.model import IPAddress, ServiceKey

FIELD_MANAGER = "lvs-operator-controller"  # the server-side apply owner of our status fields
REPORTING_CONTROLLER = "lvs.dev/controller"  # who posts the Events
# Status writes in flight at once: enough to keep the API server busy without queueing
# hundreds of requests in front of it (it serves watches and the agents too).
CONCURRENCY = 8
APPLY_ATTEMPTS = 3  # resourceVersion conflicts in a row before the queue's backoff takes over
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)  # seconds, after a failed reconcile or list
# How often VirtualServers are listed again, to remove any whose deletion kopf never reported
# (level-based healing, as client-go's resync): cheap, one list of a few objects.
RELIST_SECONDS = 300.0

log = logging.getLogger(__name__)

Key = watch.Key
_T = TypeVar("_T")


def watch_paths(prefix: str, plural: str, namespaces: Iterable[str]) -> dict[str, str]:
    """Return the API paths to list and watch `plural` under `prefix` (e.g. /api/v1) by the
    namespace they cover: one per namespace, or "" -> the cluster-wide one when
    `namespaces` is empty."""
    paths = {ns: f"{prefix}/namespaces/{ns}/{plural}" for ns in namespaces}
    return paths or {"": f"{prefix}/{plural}"}


class Controller:
    """The reconciler: changes in, statuses and Events out, while it holds the Lease.

    `api` is the API client; it must be given before `start` (tests of the pure parts leave
    it None).
    """

    def __init__(self, settings: Settings, api: client.Client | None = None) -> None:
        self.settings = settings
        self.api = api
        self.parser = Parser()
        self.leading = False
        self.virtualservers: dict[Key, Entry] = {}
        # Reflectors of Services and EndpointSlices by the namespace they cover ("": all).
        self.caches: dict[str, dict[str, watch.Reflector[Any]]] = {}
        # Reverse maps kept from the changes, to find what a change concerns.
        self.claims: dict[ServiceKey, set[Key]] = {}
        self.by_vip: dict[IPAddress, set[Key]] = {}  # VIP -> VirtualServers asking for it
        # VIPClaims this controller wrote whose echo has not come through the watch yet
        # (None: deleted); the watch's next word on an address replaces it.
        self._claims_written: dict[IPAddress, claims.Claim | None] = {}
        self._vip_locks: dict[IPAddress, asyncio.Lock] = {}  # one claim write at a time
        self._pools: list[pools.Pool] | None = None  # the valid pools (None: to rebuild)
        self.backends: dict[Key, set[Key]] = {}  # Service -> VirtualServers using it
        self.slices_of: dict[Key, set[Key]] = {}  # Service -> its EndpointSlices
        # The conflicts found by the last reconcile of each VirtualServer: key -> holder id.
        self.conflicted: dict[Key, str] = {}
        self._pending: set[Key | ServiceRef] = set()
        self._running: dict[Key | ServiceRef, asyncio.Task[None]] = {}
        self._failures: dict[Key | ServiceRef, int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._limit = asyncio.Semaphore(CONCURRENCY)
        self._synced = asyncio.Event()
        self._unsynced = 0  # reflectors that have not listed yet
        self._listed = False  # whether the controller's own VirtualServer list is in
        # VirtualServers kopf reported on since the current list began: the list is older.
        self._touched: set[Key] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Status writes, Events, the Lease and the webhook's reads share these threads.
        self._executor = ThreadPoolExecutor(CONCURRENCY + 4, thread_name_prefix="api")
        self._threads: list[threading.Thread] = []
        self.leader: Leader | None = None
        # The generation of each VirtualServer whose selected pods were checked for the
        # real-server setup (with the webhook on): once per generation; forgotten on delete.
        self._pods_checked: dict[Key, int] = {}
        self.field_manager = FIELD_MANAGER
        self.balancers = LoadBalancers(self)  # the LoadBalancer Services it serves

    # --- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the reflectors, list the VirtualServers and campaign for the Lease, on the
        client given at construction (`handlers.run` connects it before kopf starts)."""
        self._loop = asyncio.get_running_loop()
        assert self.api is not None, "the Controller needs its API client to start"
        kinds: dict[str, tuple[str, str, Callable[[Mapping[str, Any]], Any],
                               Callable[[Key, Any, Any], None]]] = {
            "services": ("/api/v1", "services", compact_service, self.service_changed),
            "endpointslices": ("/apis/discovery.k8s.io/v1", "endpointslices", compact_slice,
                               self.slice_changed),
        }
        for kind, (prefix, plural, compact, on_change) in kinds.items():
            for namespace, path in watch_paths(prefix, plural, self.settings.namespaces).items():
                self._reflect(kind, namespace, path, compact, on_change)
        # Cluster-scoped, watched whole even by a controller limited to some namespaces:
        # pools decide which VIPs a namespace may have, claims who owns each VIP, and pools
        # may select namespaces by label.
        self._reflect("vippools", "", f"/apis/{API_VERSION}/{pools.PLURAL}", compact_pool,
                      self.pool_changed)
        self._reflect("vipclaims", "", f"/apis/{API_VERSION}/{claims.PLURAL}", compact_claim,
                      self.claim_changed)
        self._reflect("namespaces", "", "/api/v1/namespaces", namespace_labels,
                      self.namespace_changed)
        self._spawn(self._list_virtualservers())
        self.leader = Leader(self.api, self.settings, call=self.call)
        self._spawn(self.leader.run(self._lead))

    def _reflect(self, kind: str, namespace: str, path: str,
                 compact: Callable[[Mapping[str, Any]], Any],
                 on_change: Callable[[Key, Any, Any], None]) -> None:
        """Start a reflector of `path` (the objects of `kind` in `namespace`, "": all) in a
        thread of its own, its changes handed to the loop."""
        assert self.api is not None
        reflector: watch.Reflector[Any] = watch.Reflector(
            f"{kind} ({path})", lister=self.api.lister(path),
            watcher=self.api.watcher(path), transform=compact,
            on_change=self._in_loop(on_change),
            on_synced=self._in_loop(self._reflector_synced))
        self.caches.setdefault(kind, {})[namespace] = reflector
        self._unsynced += 1
        thread = threading.Thread(target=reflector.run, name=f"watch {kind}", daemon=True)
        self._threads.append(thread)
        thread.start()

    async def stop(self) -> None:
        """Release the Lease (so another replica takes over at once) and disconnect."""
        for task in list(self._background) + list(self._running.values()):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self._background, *self._running.values(),
                                 return_exceptions=True)
        for reflectors in self.caches.values():
            for reflector in reflectors.values():
                reflector.stop()
        if self.leader is not None and self.leading:
            self.leading = False
            await self.leader.release()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.api is not None:
            self.api.close()

    async def call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Return `fn(*args, **kwargs)` run in the API threads (it blocks on the network)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor,
                                          functools.partial(fn, *args, **kwargs))

    def _in_loop(self, fn: Callable[..., None]) -> Callable[..., None]:
        """Return a callable that runs `fn` with its arguments in the event loop (for the
        reflectors' threads)."""
        loop = self._loop
        assert loop is not None

        def hand_over(*args: Any) -> None:
            loop.call_soon_threadsafe(fn, *args)
        return hand_over

    async def _list_virtualservers(self) -> None:
        """List the VirtualServers now and every `RELIST_SECONDS`: the first list tells the
        controller when it has seen them all (kopf says nothing about the end of its own);
        later ones remove what kopf never reported deleted (a deletion during a watch gap
        that ended in a 410 relist: kopf lists again but reports no deletions)."""
        assert self.api is not None
        paths = watch_paths(f"/apis/{API_VERSION}", PLURAL, self.settings.namespaces)
        failures = 0
        while True:
            self._touched.clear()
            try:
                listed = [obj for path in paths.values()
                          for obj in (await self.call(self.api.lister(path)))[0]]
            except Exception as error:  # the API down, or a bug: never give up listing
                delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
                failures += 1
                log.warning("listing VirtualServers: %s; retrying in %.0f s",
                            error or type(error).__name__, delay,
                            exc_info=not isinstance(error, client.ApiError))
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._take_list(listed)
            await asyncio.sleep(RELIST_SECONDS)

    def _take_list(self, listed: Iterable[Mapping[str, Any]]) -> None:
        """Bring the cache in line with a list of every VirtualServer, without undoing what
        kopf's events said while the list was under way (those keys are `_touched`)."""
        found = {watch.object_key(obj): obj for obj in listed}
        for key, obj in found.items():
            if key not in self._touched and key not in self.virtualservers:
                self._store(key, self.parser.entry(obj))
        for key in [k for k in self.virtualservers if k not in found and k not in self._touched]:
            log.info("VirtualServer %s: gone (found missing by a relist)", key)
            self._store(key, None)
        if not self._listed:
            self._listed = True
            self._maybe_synced()

    def _reflector_synced(self) -> None:
        self._unsynced -= 1
        self._maybe_synced()

    def _maybe_synced(self) -> None:
        if self._unsynced or not self._listed or self._synced.is_set():
            return
        log.info("listed %d virtualservers, %s", len(self.virtualservers), ", ".join(
            f"{sum(len(r.snapshot()) for r in reflectors.values())} {kind}"
            for kind, reflectors in self.caches.items()))
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
        for key in list(self.virtualservers):
            self.enqueue(key)
        self.balancers.reconcile_all()
        # Claims nobody asks for any more (their VirtualServers went while no controller
        # led): settle them too.
        for claim in list(self._claim_list()):
            if not self.by_vip.get(claim.address):
                self._settle_soon(claim.address)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _cached(self, kind: str, key: Key) -> Any:
        """Return the cached compact form of a Service or EndpointSlice, or None."""
        reflectors = self.caches.get(kind, {})
        reflector = reflectors.get("") or reflectors.get(key.namespace)
        return reflector.get(key) if reflector is not None else None

    # --- what changed -> what to reconcile ------------------------------------------------------

    def virtualserver_event(self, kind: str | None, body: Mapping[str, Any]) -> None:
        """Take a watch event of a VirtualServer (`kind` None for kopf's first list)."""
        key = watch.object_key(body)
        self._touched.add(key)
        if kind == "DELETED":
            self._store(key, None)
            return
        old = self.virtualservers.get(key)
        version = str((body.get("metadata") or {}).get("resourceVersion", ""))
        if old is not None and old.resource_version == version:
            return  # kopf's relist, or our own list: nothing new
        self._store(key, self.parser.entry(body))

    def _store(self, key: Key, new: Entry | None) -> None:
        old = self.virtualservers.pop(key, None) if new is None \
            else self.virtualservers.get(key)
        if new is not None:
            self.virtualservers[key] = new
        if old is None and new is None:
            return
        self.virtualserver_changed(key, old, new)

    def virtualserver_changed(self, key: Key, old: Entry | None, new: Entry | None) -> None:
        """Queue a changed VirtualServer and those whose conflicts it may change."""
        if new is None:
            self.conflicted.pop(key, None)
            self._failures.pop(key, None)
            self._pods_checked.pop(key, None)
            if old is not None:
                self.parser.forget(old.uid)
        self._index(key, old, new)
        self.balancers.virtualserver_changed(old, new)
        if new is not None:
            self.enqueue(key)
        for entry in (old, new):
            claimant = entry.claimant() if entry is not None else None
            for claim in claimant.keys if claimant is not None else ():
                for other in list(self.claims.get(claim, ())):
                    self.enqueue(other)
        holder = str(key)
        for other, held_by in list(self.conflicted.items()):
            if held_by == holder:
                self.enqueue(other)
        gone = new is None or new.deleting
        for entry in (old, new):
            vs = entry.valid if entry is not None else None
            if vs is not None:
                for other in list(self.by_vip.get(vs.vip, ())):
                    if other != key:
                        self.enqueue(other)  # sharers, and a squatter's fate
                if gone:
                    self._settle_soon(vs.vip)  # its namespace may let the VIP go

    def pool_changed(self, key: Key, old: Any, new: Any) -> None:
        """A VIPPool changed: every VirtualServer may be admitted or refused anew."""
        self._pools = None
        if isinstance(new, spec.SpecError) and self.leading:
            log.error("VIPPool %s is invalid and admits nothing: %s", key.name, new)
        self._reconcile_all()

    def claim_changed(self, key: Key, old: claims.Claim | None,
                      new: claims.Claim | None) -> None:
        """A VIPClaim changed: queue the VirtualServers of its VIP; settle a claim nobody
        asks for (a VIPClaim deleted by hand is made again for its rightful owner by the
        reconcile of its VirtualServers)."""
        either = new or old
        if either is None:
            return  # not a claim this controller can read
        address = either.address
        # The watch has the last word; the echo of this controller's own write changes
        # nothing it has not acted on already.
        echo = address in self._claims_written and self._claims_written.pop(address) == new
        if not echo:
            for other in list(self.by_vip.get(address, ())):
                self.enqueue(other)
        self.balancers.claim_changed(old, new)
        if new is not None and not self.by_vip.get(new.address):
            self._settle_soon(new.address)

    def namespace_changed(self, key: Key, old: Mapping[str, str] | None,
                          new: Mapping[str, str] | None) -> None:
        """A Namespace's labels changed: pools that select by label may decide otherwise."""
        if old == new:
            return
        for other in list(self.virtualservers):
            if other.namespace == key.name:
                self.enqueue(other)
        self.balancers.reconcile_all()  # pools may serve that namespace now, or no longer

    def service_changed(self, key: Key, old: Any, new: Any) -> None:
        """Queue the VirtualServers whose backend is this Service, and the Service itself
        when it is a LoadBalancer this controller serves."""
        self._backend_changed(key)
        self.balancers.service_changed(key, old, new)

    def slice_changed(self, key: Key, old: Mapping[str, Any] | None,
                      new: Mapping[str, Any] | None) -> None:
        """Queue the VirtualServers whose backend is this EndpointSlice's Service."""
        for compact, add in ((old, False), (new, True)):
            if compact and compact.get("service"):
                _update(self.slices_of, Key(key.namespace, compact["service"]), key, add=add)
        for compact in (old, new):
            service = compact.get("service") if compact else None
            if service:
                self._backend_changed(Key(key.namespace, service))

    def _backend_changed(self, service: Key) -> None:
        for key in list(self.backends.get(service, ())):
            self.enqueue(key)

    def _index(self, key: Key, old: Entry | None, new: Entry | None) -> None:
        """Keep `claims` and `backends` in step with a VirtualServer's change."""
        for entry, add in ((old, False), (new, True)):
            claimant = entry.claimant() if entry is not None else None
            vs = entry.valid if entry is not None else None
            for claim in claimant.keys if claimant is not None else ():
                _update(self.claims, claim, key, add=add)
            if vs is not None:
                _update(self.by_vip, vs.vip, key, add=add)
            if vs is not None and isinstance(vs.backend, spec.ServiceBackend):
                _update(self.backends, Key(vs.namespace, vs.backend.name), key, add=add)

    # --- the queue ------------------------------------------------------------------------------

    def enqueue(self, key: Key | ServiceRef) -> None:
        """Reconcile `key` soon; while it is being reconciled, once more afterwards."""
        if not self.leading or not self._synced.is_set():
            return  # a new leader, and the end of the first lists, reconcile everything
        self._pending.add(key)
        if key not in self._running:
            self._running[key] = asyncio.create_task(self._work(key))

    async def _work(self, key: Key | ServiceRef) -> None:
        try:
            while key in self._pending:
                self._pending.discard(key)
                async with self._limit:
                    try:
                        if isinstance(key, ServiceRef):
                            await self.balancers.reconcile(key.service)
                        else:
                            await self.reconcile(key)
                    except (client.ApiError, RuntimeError) as error:
                        self._retry_later(key, error)
                    except Exception as error:  # a bug: say where, and keep the others going
                        log.exception("%s: reconcile failed", _what(key))
                        self._retry_later(key, error)
                    else:
                        self._failures.pop(key, None)
        finally:
            del self._running[key]

    def _retry_later(self, key: Key | ServiceRef, error: BaseException) -> None:
        failures = self._failures.get(key, 0)
        delay = RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)]
        self._failures[key] = failures + 1
        log.warning("%s: %s; retrying in %.0f s", _what(key), error, delay)
        asyncio.get_running_loop().call_later(delay, self.enqueue, key)

    # --- one VirtualServer ----------------------------------------------------------------------

    async def reconcile(self, key: Key) -> None:
        """Bring the status of VirtualServer `key` up to date, writing only a difference.

        Raises:
            kube.client.ApiError: when the API server refuses (other than a stale
                resourceVersion) or does not answer.
            RuntimeError: when the object kept changing under every attempt.
        """
        if not self._synced.is_set():
            return  # everything is queued once everything has been listed
        entry = self.virtualservers.get(key)
        if entry is not None and not entry.deleting and self.leading:
            self._check_pods(entry)
            if entry.valid is not None:
                # Grant its VIP first, if it may have it.
                await self._settle(entry.valid.vip, reconciling=key)
        for _ in range(APPLY_ATTEMPTS):
            if entry is None or entry.deleting:
                return
            wanted = self._desired(entry)
            if not report.changed(entry.status, wanted) or not self.leading:
                return
            try:
                await self._apply(entry, wanted)
            except client.ApiError as error:
                if error.status == 404:
                    return
                if error.status != 409:
                    raise
                entry = await self._fetch(key)  # our copy was stale: read it, start over
                continue
            ready = next(c for c in wanted["conditions"] if c["type"] == conditions.READY)
            log.info("VirtualServer %s: status written: Ready=%s %s, real servers %s",
                     key, ready["status"], ready["reason"], wanted["ready"])
            for event in report.events(entry.status, wanted):
                # Posted on the side: an Event must not hold up the next status write.
                self._spawn(self._post(entry, event))
            return
        raise RuntimeError(f"it changed under each of {APPLY_ATTEMPTS} attempts")

    def _check_pods(self, entry: Entry) -> None:
        """Start a check for pods of a DR/Tunnel VirtualServer's Service that lack the
        real-server setup (created before the VirtualServer, or while the webhook was down):
        the webhook only sees new pods. Once per generation, and only with the webhook on."""
        vs = entry.valid
        if (self.settings.webhook is None or vs is None
                or not isinstance(vs.backend, spec.ServiceBackend)
                or vs.forwarding not in admission.MODE_OF):
            return
        if self._pods_checked.get(entry.key) != entry.generation:
            self._pods_checked[entry.key] = entry.generation
            self._spawn(self._warn_pods(entry, vs, vs.backend.name))

    async def _warn_pods(self, entry: Entry, vs: spec.VirtualServer, service_name: str) -> None:
        """Post a Warning Event naming the pods that need a restart, if there are any."""
        assert self.api is not None
        service = self._cached("services", Key(entry.namespace, service_name))
        selector = admission.service_selector(service)
        if selector is None:
            return
        try:
            listed = await self.call(
                self.api.request, "GET", f"/api/v1/namespaces/{entry.namespace}/pods",
                query=[("labelSelector", admission.label_selector(selector))])
        except client.ApiError as error:
            log.warning("VirtualServer %s: cannot list its pods: %s", entry.key, error)
            return
        lacking = admission.pods_lacking(vs, service, listed.get("items") or [])
        if lacking:
            await self._post(entry, report.Event(
                type="Warning", reason="RealServerSetupMissing",
                message=admission.restart_message(entry.name, service_name, lacking)))

    def _desired(self, entry: Entry) -> dict[str, Any]:
        conflict = None
        resolution = None
        refusal = self._refusal(entry)
        claimant = entry.claimant() if refusal is None else None
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
                              previous=entry.status, now=datetime.now(UTC), refusal=refusal)

    def _rivals(self, claimant: Claimant) -> list[Claimant]:
        """Return the VirtualServers that claim a key of `claimant`'s, but those refused
        their VIP: a refused squatter, however old, takes nothing from the VIP's owner."""
        keys = {other for key in claimant.keys for other in self.claims.get(key, ())}
        entries = [e for e in (self.virtualservers.get(key) for key in keys)
                   if e is not None and (e.key == Key(claimant.namespace, claimant.name)
                                         or self._refusal(e) is None)]
        return [c for c in (e.claimant() for e in entries) if c is not None]

    # --- VIP pools and claims -------------------------------------------------------------------

    def _pool_list(self) -> list[pools.Pool]:
        if self._pools is None:
            reflector = self.caches.get("vippools", {}).get("")
            found = reflector.snapshot().values() if reflector is not None else ()
            self._pools = [p for p in found if isinstance(p, pools.Pool)]
        return self._pools

    def _claim_list(self) -> list[claims.Claim]:
        reflector = self.caches.get("vipclaims", {}).get("")
        stored = {c.address: c for c in (reflector.snapshot().values() if reflector else ())
                  if c is not None}
        stored.update(self._claims_written)
        return [c for c in stored.values() if c is not None]

    def _claim(self, vip: IPAddress) -> claims.Claim | None:
        """Return the claim on `vip`: the one just written, else the watched one."""
        if vip in self._claims_written:
            return self._claims_written[vip]
        reflector = self.caches.get("vipclaims", {}).get("")
        found = reflector.get(Key("", claims.name_of(vip))) if reflector is not None else None
        return found if isinstance(found, claims.Claim) and found.address == vip else None

    def _namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        """Return the labels of `namespace` (None: not known)."""
        reflector = self.caches.get("namespaces", {}).get("")
        return reflector.get(Key("", namespace)) if reflector is not None else None

    def _admit(self, vs: spec.VirtualServer) -> pools.Verdict:
        return pools.admit(vs, self._pool_list(), self._namespace_labels(vs.namespace))

    def _refusal(self, entry: Entry) -> report.Refusal | None:
        """Return why the pools or the VIP's owner refuse `entry`, or None."""
        vs = entry.valid
        if vs is None:
            return None
        verdict = self._admit(vs)
        if verdict.vs is None:
            return report.Refusal(verdict.reason, verdict.message)
        why = claims.check(verdict.vs, self._claim(vs.vip),
                           refused_before=entry.refused_before)
        return report.Refusal(claims.VIP_IN_USE, why) if why else None

    def _users(self, vip: IPAddress) -> list[claims.User]:
        users = []
        for key in self.by_vip.get(vip, ()):
            entry = self.virtualservers.get(key)
            vs = entry.valid if entry is not None else None
            if entry is None or vs is None or entry.deleting:
                continue
            verdict = self._admit(vs)
            users.append(claims.User(vs=verdict.vs or vs, created=entry.created,
                                     pool=verdict.pool, refused=entry.refused_before))
        return users

    def _settle_soon(self, vip: IPAddress) -> None:
        if self.leading and self._synced.is_set():
            self._spawn(self._settle_or_retry(vip))

    async def _settle_or_retry(self, vip: IPAddress) -> None:
        try:
            await self._settle(vip)
        except client.ApiError as error:
            log.warning("VIP %s: cannot write its claim: %s; retrying in %.0f s", vip, error,
                        RETRY_DELAYS[1])
            asyncio.get_running_loop().call_later(RETRY_DELAYS[1], self._settle_soon, vip)

    async def _settle(self, vip: IPAddress, *, reconciling: Key | None = None) -> None:
        """Create, hand over or delete the VIPClaim of `vip` as `claims.settle` says (one
        write per VIP at a time; only the leader writes), then queue the VirtualServers of
        the VIP but `reconciling` (the one whose reconcile asks, which goes on).

        Raises:
            kube.client.ApiError: when the API server refuses (but for a lost race, after
                which the claim is read again) or does not answer.
        """
        if not self.leading or not self._synced.is_set():
            return
        lock = self._vip_locks.setdefault(vip, asyncio.Lock())
        async with lock:
            stored = self._claim(vip)
            action, claim = claims.settle(vip, stored, self._users(vip),
                                          wanted=self.balancers.wanted(stored))
            if not action or claim is None:
                return
            try:
                self._claims_written[vip] = await self._write_claim(action, claim)
            except client.ApiError as error:
                if error.status not in (404, 409):
                    raise
                # Another writer was first (a former leader, an admin): read and go on.
                self._claims_written[vip] = await self._read_claim(vip)
            else:
                self.balancers.claim_changed(stored, self._claims_written[vip])
                log.info("VIP %s: claim %s (namespace %s)", vip,
                         {"create": "granted", "replace": "handed over",
                          "delete": "released"}[action], claim.namespace)
            for other in list(self.by_vip.get(vip, ())):
                if other != reconciling:
                    self.enqueue(other)

    async def _write_claim(self, action: str, claim: claims.Claim) -> claims.Claim | None:
        """Create, replace (with `claim`'s resourceVersion as precondition) or delete
        `claim`; return the claim stored afterwards (None: deleted).

        Raises:
            kube.client.ApiError: 409 when another writer was first, 404 when it is gone.
        """
        assert self.api is not None
        base = f"/apis/{API_VERSION}/{claims.PLURAL}"
        if action == "delete":
            await self.call(self.api.request, "DELETE", f"{base}/{claim.name}", body={
                "preconditions": {"resourceVersion": claim.resource_version}})
            return None
        if action == "create":
            body = await self.call(self.api.request, "POST", base, body=claim.document())
        else:
            body = await self.call(self.api.request, "PUT", f"{base}/{claim.name}",
                                   body=claim.document())
        return compact_claim(body)

    async def _read_claim(self, vip: IPAddress) -> claims.Claim | None:
        assert self.api is not None
        try:
            body = await self.call(self.api.request, "GET",
                                   f"/apis/{API_VERSION}/{claims.PLURAL}/{claims.name_of(vip)}")
        except client.ApiError as error:
            if error.status == 404:
                return None
            raise
        return compact_claim(body)

    def _resolve(self, vs: spec.VirtualServer) -> resolve.Resolution:
        if not isinstance(vs.backend, spec.ServiceBackend):
            return resolve.resolve(vs, None, ())
        where = Key(vs.namespace, vs.backend.name)
        slices = (self._cached("endpointslices", k) for k in self.slices_of.get(where, ()))
        return resolve.resolve(vs, self._cached("services", where),
                               [s for s in slices if s is not None])

    async def _apply(self, entry: Entry, wanted: Mapping[str, Any]) -> None:
        """Server-side apply `wanted` to the status, if the object is still the one read.

        Raises:
            kube.client.ApiError: 409 when it changed since, 404 when it is gone.
        """
        assert self.api is not None
        body = {
            "apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": entry.name, "namespace": entry.namespace,
                         "resourceVersion": entry.resource_version},
            "status": wanted,
        }
        await self.call(
            self.api.request, "PATCH",
            f"/apis/{API_VERSION}/namespaces/{entry.namespace}/{PLURAL}/{entry.name}/status",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")], body=body,
            content_type="application/apply-patch+yaml")

    async def _fetch(self, key: Key) -> Entry | None:
        assert self.api is not None
        try:
            body = await self.call(
                self.api.request, "GET",
                f"/apis/{API_VERSION}/namespaces/{key.namespace}/{PLURAL}/{key.name}")
        except client.ApiError as error:
            if error.status == 404:
                return None
            raise
        return self.parser.entry(body)

    async def _post(self, entry: Entry, event: report.Event) -> None:
        """Post `event` on the VirtualServer."""
        await self._post_event(
            {"apiVersion": API_VERSION, "kind": KIND, "name": entry.name,
             "namespace": entry.namespace, "uid": entry.uid},
            type=event.type, reason=event.reason, message=event.message,
            action="UpdateStatus")

    async def _post_event(self, regarding: Mapping[str, str], *, type: str, reason: str,
                          message: str, action: str) -> None:
        """Post an Event on the object `regarding`; a failure is logged, not retried (the
        status says it all)."""
        assert self.api is not None
        body = events.event(
            regarding=regarding, type=type, reason=reason, note=message, action=action,
            reporting_controller=REPORTING_CONTROLLER,
            reporting_instance=self.settings.identity, now=datetime.now(UTC))
        try:
            await self.call(events.post, self.api, body)
        except client.ApiError as error:
            log.warning("%s %s/%s: cannot post Event %s: %s", regarding.get("kind"),
                        regarding.get("namespace"), regarding.get("name"), reason, error)


def _what(key: Key | ServiceRef) -> str:
    """Return a queue key for the log: `VirtualServer ns/name` or `Service ns/name`."""
    return str(key) if isinstance(key, ServiceRef) else f"VirtualServer {key}"
