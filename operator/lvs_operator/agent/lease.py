"""This director's Lease and its watch of everyone's: the glue around `election`.

With the keepalived engine (the default) the Lease is *membership*: who the directors are,
their Node labels and their VRRP addresses (annotation `lvs.dev/vrrp-address`), renewed
every 10 s (as kubelet renews its node Lease); VRRP on the directors' own network decides
who holds what, so nothing here changes a role, and a director whose Lease is not renewed
(the API server away, or the director dead) stays a VRRP peer. With the lease engine the
Lease carries liveness, as described below.

Each director keeps one `coordination.k8s.io/v1` Lease, `lvs-director-<node>` in the
agent's namespace, labelled `lvs.dev/director-lease: "true"`, holderIdentity = the node. It
renews it every `renew_seconds` (a merge patch of spec.renewTime; lease engine: about 5
writes a second, whatever the number of VirtualServers; keepalived: one every 10 s, and at
once when what it publishes changes) and copies into it
- its duration in milliseconds (annotation `lvs.dev/lease-duration-ms`; leaseDurationSeconds
  is whole seconds, rounded up, for tools that read it),
- its Node's labels (annotation `lvs.dev/node-labels`, JSON): an agent watches only its own
  Node, so this is how the others learn which VirtualServers it is eligible for;
- its term (annotation `lvs.dev/term`): a new random token for each unbroken run of
  renewals (agent start, or renewing again after a fence; spec.acquireTime is set to the
  run's start for people reading the Lease). Its status.directors entries carry the term
  they were written in, so the others can tell a claim left from an earlier run
  (`election.Claim`).

The Lease is owned by the director's Node (metadata.ownerReferences, as kubelet's own node
Lease is): when the Node is deleted, Kubernetes' garbage collector deletes the Lease too, so
no Lease outlives the director it stood for. While this agent finds no Node of its name, its
Lease has no owner (the collector would delete it again and again).

A `watch.Reflector` keeps every director's Lease (by that label); each change is recorded
in the `election.Tracker` at the local time it is seen. A monitor thread wakes the sync
loop when the election's view changes, including by time alone (a Lease expiring, this
director fencing itself, a director settling). The watch carries this director's own
renewals, so a watch that stays silent for a few durations is dead and is restarted.

The policy (what a renewal says, when, what a failure means) is here; the requests are
`kube.lease`'s, the mechanics the controller's leader election uses too.

Three threads: the renewer (blocks on the API server, with a request timeout of the renew
deadline), the reflector, and the monitor (never blocks on the network: a fence takes
effect on time even while a renewal hangs).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from lvs_operator.agent import election
from lvs_operator.agent.settings import HASettings, WatchSettings
from lvs_operator.kube import client, watch
from lvs_operator.kube import lease as kube_lease

log = logging.getLogger(__name__)

LABEL = "lvs.dev/director-lease"
DURATION_ANNOTATION = "lvs.dev/lease-duration-ms"
LABELS_ANNOTATION = "lvs.dev/node-labels"
TERM_ANNOTATION = "lvs.dev/term"
ADDRESS_ANNOTATION = "lvs.dev/vrrp-address"
PREFIX = "lvs-director-"


class Api(client.Requester, Protocol):
    """What the Lease glue asks of the API server (`client.Client` does it): requests (the
    Lease writes, through `kube_lease.Leases`), and lists and watches of the Leases."""

    def lister(self, path: str, *, query: Sequence[tuple[str, str]] = ()) -> watch.Lister:
        """Return a function that lists `path`."""
        ...

    def watcher(self, path: str, *, query: Sequence[tuple[str, str]] = (),
                timeout_seconds: int = 300, read_timeout: float = 120.0) -> watch.Watcher:
        """Return a function that watches `path` from a resourceVersion."""
        ...


def lease_name(node: str) -> str:
    """Return the name of director `node`'s Lease."""
    return f"{PREFIX}{node}"


def new_term() -> str:
    """Return a fresh term token (random: unique across restarts without any state)."""
    return secrets.token_hex(8)


def owners(node: Mapping[str, Any]) -> list[dict[str, str]]:
    """Return the ownerReferences that make a Lease the dependent of `node` (a Node object),
    or [] when it has no uid."""
    meta = node.get("metadata") or {}
    if not meta.get("uid") or not meta.get("name"):
        return []
    return [{"apiVersion": "v1", "kind": "Node", "name": str(meta["name"]),
             "uid": str(meta["uid"])}]


def renewal(node: str, *, duration: float, labels: Mapping[str, str], term: str,
            now: datetime, begins: bool = False,
            owned_by: list[dict[str, str]] | None = None, address: str = "") -> dict[str, Any]:
    """Return the merge patch that renews director `node`'s Lease in `term` (and refreshes
    what it copies into it); `begins`: the renewal starts a new run (sets acquireTime);
    `owned_by`: replaces the Lease's ownerReferences (None leaves them, [] removes them);
    `address`: this director's VRRP address ("" says none)."""
    spec: dict[str, Any] = {"holderIdentity": node, "renewTime": kube_lease.micro_time(now),
                            "leaseDurationSeconds": max(1, math.ceil(duration))}
    if begins:
        spec["acquireTime"] = kube_lease.micro_time(now)
    meta: dict[str, Any] = {"labels": {LABEL: "true"}, "annotations": {
        DURATION_ANNOTATION: str(round(duration * 1000)),
        LABELS_ANNOTATION: json.dumps(dict(sorted(labels.items())), separators=(",", ":")),
        TERM_ANNOTATION: term, ADDRESS_ANNOTATION: address or None}}
    if owned_by is not None:
        meta["ownerReferences"] = owned_by or None  # null: a merge patch removes the field
    return {"metadata": meta, "spec": spec}


def body(node: str, namespace: str, *, duration: float, labels: Mapping[str, str],
         term: str, now: datetime, owned_by: list[dict[str, str]] | None = None,
         address: str = "") -> dict[str, Any]:
    """Return a new Lease for director `node`, in `term`, owned by `owned_by` if any."""
    patch = renewal(node, duration=duration, labels=labels, term=term, now=now, begins=True,
                    owned_by=owned_by or None, address=address)
    annotations = patch["metadata"]["annotations"]
    patch["metadata"]["annotations"] = {k: v for k, v in annotations.items() if v is not None}
    return {"apiVersion": kube_lease.API_VERSION, "kind": kube_lease.KIND,
            "metadata": {"name": lease_name(node), "namespace": namespace, **patch["metadata"]},
            "spec": {**patch["spec"], "leaseTransitions": 0}}


def seen(obj: watch.Object, *, default_duration: float) -> election.Seen | None:
    """Return what a Lease says for the election; None when it is no director's."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    node = spec.get("holderIdentity")
    if not node:
        return None
    annotations = meta.get("annotations") or {}
    duration = default_duration
    try:
        duration = int(annotations[DURATION_ANNOTATION]) / 1000
    except (KeyError, ValueError, TypeError):
        seconds = spec.get("leaseDurationSeconds")
        if isinstance(seconds, int) and seconds > 0:
            duration = float(seconds)
    labels: dict[str, str] = {}
    try:
        raw = json.loads(annotations.get(LABELS_ANNOTATION) or "{}")
        if isinstance(raw, dict):
            labels = {str(k): str(v) for k, v in raw.items()}
    except ValueError:
        pass  # unreadable: eligible only where no label is asked for
    return election.Seen(node=str(node), marker=str(spec.get("renewTime")),
                         duration=duration, labels=labels,
                         address=str(annotations.get(ADDRESS_ANNOTATION) or ""),
                         term=str(annotations.get(TERM_ANNOTATION) or ""))


class Keeper:
    """Renews this director's Lease and watches everyone's; `view()` is the election's
    state now. `start`, then `stop`."""

    def __init__(self, settings: HASettings, *, node: str, api: Api,
                 on_change: Callable[[], None], watch_settings: WatchSettings | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.settings = settings
        self.node = node
        self.api = api
        self._leases = kube_lease.Leases(api)
        self._on_change = on_change
        self._clock = clock
        self._now = now
        self._lock = threading.Lock()
        self._poke = threading.Event()
        self._stopping = threading.Event()
        self._tracker = election.Tracker(node, settle=settings.settle_seconds)
        self._labels: dict[str, str] = {}
        self._address = ""  # this director's VRRP address, published in the Lease
        # What labels and address the Lease was last written with: a change is written at
        # once, not at the next renewal (which is 10 s away with keepalived).
        self._published: tuple[dict[str, str], str] | None = None
        self._renew_now = threading.Event()
        # What the Lease publishes must be known before its first write: a Lease written
        # without labels (or, with keepalived, without the VRRP address) would make every
        # other director drop this one from its plans for a moment, and move VIPs.
        self._known = threading.Event()
        self._have_labels = False
        self._have_address = not settings.keepalived
        self._owners: list[dict[str, str]] = []  # the Node, once seen (see `set_owner`)
        # What the Lease's ownerReferences were last written as (None: not known): a
        # renewal sends them only when they differ, or when it begins a run.
        self._owners_written: list[dict[str, str]] | None = None
        self._renewed: float | None = None  # start of the last successful renewal
        self._held_since: float | None = None  # start of the current run of renewals
        self._term = ""  # the current run's term (see election.Claim)
        self._failing = False  # said so in the log already
        self._fenced_logged = False
        self._path = kube_lease.leases_path(settings.namespace)
        selector = [("labelSelector", f"{LABEL}=true")]
        watch_settings = watch_settings or WatchSettings()
        duration = settings.lease_duration_seconds
        self.reflector = watch.Reflector(
            f"director leases in {settings.namespace}",
            lister=api.lister(self._path, query=selector),
            # Our own renewals flow through this watch: silence means it is dead.
            watcher=api.watcher(self._path, query=selector,
                                timeout_seconds=watch_settings.timeout_seconds,
                                read_timeout=max(2.0, 4 * duration)),
            transform=watch.keep,
            on_change=lambda key, old, new: self._observe(),
            on_synced=self._observe,
            backoff_max=min(watch_settings.backoff_max_seconds, 2.0))
        self._threads: list[threading.Thread] = []

    @property
    def synced(self) -> threading.Event:
        """Set once the first complete Lease list is in."""
        return self.reflector.synced

    def set_labels(self, labels: Mapping[str, str]) -> None:
        """Copy the Node's `labels` into the Lease from the next renewal on."""
        with self._lock:
            self._labels = dict(labels)
            self._have_labels = True
            self._wake_renewer()

    def set_address(self, address: str) -> None:
        """Publish `address` (this director's VRRP address; "" for none) in the Lease from
        the next renewal on, which comes at once when it changed."""
        with self._lock:
            self._address = address
            self._have_address = True
            self._wake_renewer()

    def _wake_renewer(self) -> None:
        """Renew now if what the Lease publishes changed (call with the lock held)."""
        if self._have_labels and self._have_address:
            self._known.set()
        if self._published is not None and self._published != (self._labels, self._address):
            self._renew_now.set()

    def set_owner(self, owned_by: list[dict[str, str]]) -> None:
        """Make the Lease owned by `owned_by` (`owners` of this director's Node; [] while
        there is no such Node) from the next renewal on."""
        with self._lock:
            self._owners = owned_by

    def start(self) -> None:
        """Start renewing and watching (threads)."""
        self._threads = [threading.Thread(target=target, name=name, daemon=True)
                         for target, name in ((self._renew_loop, "lease renewer"),
                                              (self.reflector.run, self.reflector.name),
                                              (self._monitor_loop, "election monitor"))]
        for thread in self._threads:
            thread.start()

    def stop(self, *, delete: bool) -> None:
        """Stop renewing and watching; with `delete`, delete the Lease, so the others see
        this director gone at once (its VIPs must have been released first)."""
        self._stopping.set()
        self._poke.set()
        self._renew_now.set()
        self.reflector.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        if delete:
            deadline = max(self.settings.lease_duration_seconds, 1.0)
            try:
                if self._leases.delete(self.settings.namespace, lease_name(self.node),
                                       timeout=(deadline, deadline)):
                    log.info("deleted Lease %s/%s", self.settings.namespace,
                             lease_name(self.node))
            except client.ApiError as e:
                log.warning("cannot delete Lease %s/%s: %s", self.settings.namespace,
                            lease_name(self.node), e)

    def view(self) -> election.View:
        """Return the election as this director sees it now."""
        with self._lock:
            return self._tracker.view(self._clock(), **self._timing(), term=self._term)

    # --- threads --------------------------------------------------------------------------

    def _timing(self) -> dict[str, Any]:
        return {"renewed": self._renewed, "held_since": self._held_since,
                "deadline": self.settings.renew_deadline_seconds,
                "duration": self.settings.lease_duration_seconds}

    def _observe(self) -> None:
        now = self._clock()
        default = self.settings.lease_duration_seconds
        found = [s for s in (seen(obj, default_duration=default)
                             for obj in self.reflector.snapshot().values()) if s]
        with self._lock:
            self._tracker.observe(found, now)
        self._poke.set()

    def _renew_loop(self) -> None:
        period = self.settings.renew_seconds
        while not self._known.is_set():  # see __init__: nothing half-known is published
            if self._stopping.wait(0.05):
                return
        while not self._stopping.is_set():
            started = self._clock()
            with self._lock:
                begins = self._renewed is None or \
                    started >= self._renewed + self.settings.renew_deadline_seconds
            # A renewal that starts a new run carries a new term; the term becomes this
            # director's only once the renewal is in (so no status entry carries a term
            # its Lease has not shown).
            term = new_term() if begins else self._term
            ok = self._renew(term, begins=begins)
            with self._lock:
                if ok:
                    if begins:
                        self._held_since = started  # a new unbroken run begins
                        self._term = term
                    self._renewed = started
            self._poke.set()
            self._renew_now.wait(max(0.0, started + period - self._clock()))
            self._renew_now.clear()

    def _renew(self, term: str, *, begins: bool) -> bool:
        """Renew (or create) the Lease once in `term`; return whether it worked."""
        s = self.settings
        with self._lock:
            labels = dict(self._labels)
            address = self._address
            owned_by = self._owners
            send_owners = begins or owned_by != self._owners_written
        timeout = (s.renew_deadline_seconds, s.renew_deadline_seconds)
        name = lease_name(self.node)
        now = self._now()
        try:
            try:
                self._leases.patch(s.namespace, name, renewal(
                    self.node, duration=s.lease_duration_seconds, labels=labels, term=term,
                    now=now, begins=begins, owned_by=owned_by if send_owners else None,
                    address=address),
                    timeout=timeout)
            except client.ApiError as e:
                if e.status != 404:
                    raise
                created = self._leases.create(s.namespace, body(
                    self.node, s.namespace, duration=s.lease_duration_seconds, labels=labels,
                    term=term, now=now, owned_by=owned_by, address=address), timeout=timeout)
                if created is None:
                    # Created between the two requests (by an earlier run of this agent):
                    # not renewed by this attempt; the next one patches it.
                    raise client.ApiError(409, f"Lease {s.namespace}/{name} was created "
                                          "meanwhile") from None
                log.info("created Lease %s/%s", s.namespace, name)
        except client.ApiError as e:
            if not self._failing:
                log.warning("cannot renew Lease %s/%s: %s", s.namespace, name, e)
            self._failing = True
            return False
        if self._failing:
            log.info("renewing Lease %s/%s again", s.namespace, name)
        self._failing = False
        with self._lock:
            self._owners_written = owned_by
            self._published = (labels, address)
        return True

    def _monitor_loop(self) -> None:
        last: tuple[object, ...] | None = None
        while not self._stopping.is_set():
            self._poke.clear()
            now = self._clock()
            with self._lock:
                timing = self._timing()
                view = self._tracker.view(now, **timing, term=self._term)
                later = self._tracker.next_change(now, **timing)
            signature = view.signature()
            if signature != last:
                if last is not None:
                    self._log(view)
                last = signature
                with contextlib.suppress(Exception):
                    self._on_change()
            wait = 1.0 if later is None else min(1.0, max(0.0, later - self._clock()))
            self._poke.wait(wait + 0.001)  # just past the change, not just before it

    def _log(self, view: election.View) -> None:
        live = sorted(n for n, p in view.peers.items() if p.live)
        if self.settings.keepalived:
            # Membership only: a Lease that is not renewed changes no role (VRRP decides).
            log.info("directors with a Lease renewed within %g s besides this one: %s%s",
                     self.settings.lease_duration_seconds, ", ".join(live) or "none",
                     "" if not view.fenced or self._renewed is None else
                     "; this director's own renewals are failing (the API server is away?): "
                     "nothing changes for its VIPs")
            return
        if view.fenced and not self._fenced_logged and self._renewed is not None:
            log.error("Lease %s/%s not renewed within %g s: releasing the VIPs another "
                      "director could take, taking none, until it is",
                      self.settings.namespace, lease_name(self.node),
                      self.settings.renew_deadline_seconds)
        self._fenced_logged = view.fenced
        log.info("election: %s%s; live directors besides this one: %s",
                 "fenced" if view.fenced else "renewing",
                 "" if view.ready else " (not ready to take VIPs yet)",
                 ", ".join(live) or "none")
