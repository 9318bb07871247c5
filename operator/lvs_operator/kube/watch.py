"""List, then watch, one kind of object into a local cache (a "reflector").

The cache is level-based state for the sync loop: it holds the objects as they are now,
not the events. A watch resumes from the last resourceVersion it saw (bookmarks included),
so a reconnect does not list again; only when the API server says that version is gone
(410 Gone: etcd compacted it) is everything listed again, which also forgets objects
deleted meanwhile. Errors (the API server unreachable) are retried with backoff; the
thread never dies of them.

No Kubernetes client here: the list and watch calls are given as functions (`kube` builds
them), so the relist logic is tested against a scripted stream.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

log = logging.getLogger(__name__)

Object = Mapping[str, Any]
T = TypeVar("T")


class Gone(Exception):
    """The resourceVersion a watch started from is too old (HTTP 410): list again."""


class Stream(Protocol):
    """A watch in progress: iterating yields events ({type, object}) until it ends."""

    def __iter__(self) -> Iterator[Object]:
        """Yield watch events as they arrive; end when the server ends the watch.

        Raises:
            Gone: when the server answers 410 to the watch request.
        """
        ...

    def close(self) -> None:
        """End the watch; safe from another thread (a blocked read returns)."""
        ...


Lister = Callable[[], tuple[list[Object], str]]  # -> (objects, the list's resourceVersion)
Watcher = Callable[[str], Stream]  # resourceVersion -> a watch from there


class Key(NamedTuple):
    """Which object: its namespace ("" for a cluster-scoped object) and name. Both binaries
    key their caches by it; it prints as `namespace/name` (just `name` when cluster-scoped)."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def object_key(obj: Object) -> Key:
    """Return the key of `obj` (an object as the API server sends it)."""
    meta = obj.get("metadata") or {}
    return Key(str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def keep(obj: Object) -> Object:
    """Return `obj` itself: the transform of a reflector that caches whole objects."""
    return obj


class Reflector(Generic[T]):
    """Keeps its cache equal to the API server's objects of one kind; run it in a thread.

    The cache holds `transform(object)` by `Key` (a compact form: what the caller needs, so
    a cluster's worth of EndpointSlices stays small). `on_change(key, old, new)` (None for
    absent) is called from the reflector's thread for every object of the first list, and
    then whenever a cached value appears, disappears or changes: watch events, and the
    differences a relist finds (after a 410 Gone). `on_synced` is called once, after the
    first complete list, even when it was empty.
    """

    def __init__(self, name: str, *, lister: Lister, watcher: Watcher,
                 transform: Callable[[Object], T],
                 on_change: Callable[[Key, T | None, T | None], None] = lambda k, o, n: None,
                 on_synced: Callable[[], None] = lambda: None,
                 backoff_max: float = 30.0) -> None:
        self.name = name
        self._lister = lister
        self._watcher = watcher
        self._transform = transform
        self._on_change = on_change
        self._on_synced = on_synced
        self._backoff_max = backoff_max
        self._items: dict[Key, T] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stream: Stream | None = None
        self._version: str | None = None  # the last resourceVersion seen; None: list
        self.synced = threading.Event()
        """Set once the first complete list is in the cache."""
        self.lists = 0
        """How many times the reflector has listed (1 + relists)."""

    def get(self, key: Key) -> T | None:
        """Return the cached value of `key`, or None."""
        with self._lock:
            return self._items.get(key)

    def snapshot(self) -> dict[Key, T]:
        """Return the cached values by key (a copy of the mapping; the values are shared and
        must not be changed)."""
        with self._lock:
            return dict(self._items)

    def stop(self) -> None:
        """Make `run` return soon (it closes the watch in progress)."""
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.close()

    def run(self) -> None:
        """List and watch until `stop`; returns only then."""
        delay = 0.0
        while not self._stopping.is_set():
            try:
                if self._version is None:
                    self._version = self._relist()
                self._watch()
                delay = 0.0
            except Gone as e:
                log.info("%s: %s; listing again", self.name, e)
                self._version = None
            # The thread must outlive any failure of the API server or the connection
            # (urllib3, TLS, JSON, HTTP errors alike): log it, back off, and watch again from
            # the last version seen.
            except Exception as e:
                if self._stopping.is_set():
                    break
                delay = min(max(delay * 2, 0.5), self._backoff_max)
                log.warning("%s: %s; retrying in %.1f s", self.name, e or type(e).__name__,
                            delay)
                self._stopping.wait(delay)

    def _relist(self) -> str:
        objects, version = self._lister()
        fresh = {object_key(obj): self._transform(obj) for obj in objects}
        with self._lock:
            old, self._items = self._items, fresh
        self.lists += 1
        # In the list's order, then what it no longer has: deterministic, for callers and tests.
        for key in [*fresh, *(k for k in old if k not in fresh)]:
            before, after = old.get(key), fresh.get(key)
            if before != after:
                self._on_change(key, before, after)
        if not self.synced.is_set():
            self.synced.set()
            self._on_synced()
        return version

    def _watch(self) -> None:
        """Watch from the last version seen until the server ends the watch, keeping
        `_version` at the last resourceVersion seen (bookmarks included).

        Raises:
            Gone: when that version has expired.
            RuntimeError: when the server sends another error event.
        """
        assert self._version is not None
        stream = self._watcher(self._version)
        self._stream = stream
        try:
            if self._stopping.is_set():
                return
            for event in stream:
                kind = event.get("type")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(f"resourceVersion {self._version} is gone: "
                                   f"{obj.get('message')}")
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                if kind in ("ADDED", "MODIFIED"):
                    self._put(obj)
                elif kind == "DELETED":
                    self._remove(obj)
                # BOOKMARK: only the resourceVersion moves on
                self._version = (obj.get("metadata") or {}).get("resourceVersion") \
                    or self._version
        finally:
            self._stream = None
            stream.close()

    def _put(self, obj: Object) -> None:
        key, new = object_key(obj), self._transform(obj)
        with self._lock:
            old = self._items.get(key)
            self._items[key] = new
        if old != new:
            self._on_change(key, old, new)

    def _remove(self, obj: Object) -> None:
        key = object_key(obj)
        with self._lock:
            old = self._items.pop(key, None)
        if old is not None:
            self._on_change(key, old, None)
