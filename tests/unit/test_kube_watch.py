"""kube.watch: the reflector's list, watch, resume and relist logic, on scripted streams."""

from __future__ import annotations

import threading
import time

import pytest

from lvs_operator.kube import watch


def obj(name, rv, **labels):
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv,
                         "labels": labels}}


def event(kind, name, rv, **labels):
    return {"type": kind, "object": obj(name, rv, **labels)}


def bookmark(rv):
    return {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": rv}}}


GONE = {"type": "ERROR", "object": {"kind": "Status", "code": 410,
                                    "message": "too old resource version: 5 (9)"}}


class Blocking:
    """A stream that sends nothing until closed (the server holding the watch open)."""

    def __init__(self):
        self.closed = threading.Event()

    def __iter__(self):
        self.closed.wait(10)
        return iter(())

    def close(self):
        self.closed.set()


class Script:
    """Scripted API: `lists` answer list calls in turn, `watches` watch calls (a list of
    events, or an exception to raise from the call); then watches block until closed."""

    def __init__(self, lists, watches):
        self.lists = list(lists)
        self.watches = list(watches)
        self.watched_from: list[str] = []
        self.listed = 0
        self.done = threading.Event()

    def lister(self):
        self.listed += 1
        answer = self.lists.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def watcher(self, version):
        self.watched_from.append(version)
        if not self.watches:
            self.done.set()
            return Blocking()
        answer = self.watches.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return _Events(answer)


class _Events:
    def __init__(self, events):
        self.events = events
        self.closed = False

    def __iter__(self):
        return iter(self.events)

    def close(self):
        self.closed = True


def run(script, transform=watch.keep):
    changes = []
    synced = []
    reflector = watch.Reflector("test", lister=script.lister, watcher=script.watcher,
                                transform=transform,
                                on_change=lambda *change: changes.append(change),
                                on_synced=lambda: synced.append(1), backoff_max=0.01)
    thread = threading.Thread(target=reflector.run, daemon=True)
    thread.start()
    assert script.done.wait(10), "the script did not run to its end"
    reflector.stop()
    thread.join(5)
    assert not thread.is_alive(), "stop() must end run()"
    assert synced == [1], "on_synced is called once, after the first list"
    return reflector, changes


def names(reflector):
    return {str(k): v["metadata"]["resourceVersion"] for k, v in reflector.snapshot().items()}


def versions(changes):
    """Return each change as (key, old version, new version)."""
    return [(str(key), *(o["metadata"]["resourceVersion"] if o else None for o in (old, new)))
            for key, old, new in changes]


def test_list_then_watch_applies_events_and_resumes_from_the_last_version():
    script = Script(
        lists=[([obj("a", "3"), obj("b", "4")], "5")],
        watches=[[event("MODIFIED", "a", "6"), event("ADDED", "c", "7"),
                  event("DELETED", "b", "8"), bookmark("12")],
                 [event("MODIFIED", "c", "13")]],
    )
    reflector, changes = run(script)
    assert script.listed == 1, "a watch that ends normally resumes; it does not relist"
    assert script.watched_from == ["5", "12", "13"], "bookmarks move the version on"
    assert names(reflector) == {"ns/a": "6", "ns/c": "13"}
    assert reflector.synced.is_set()
    assert versions(changes) == [  # each listed object, then every event but the bookmark
        ("ns/a", None, "3"), ("ns/b", None, "4"), ("ns/a", "3", "6"), ("ns/c", None, "7"),
        ("ns/b", "4", None), ("ns/c", "7", "13")]
    assert reflector.get(watch.Key("ns", "c"))["metadata"]["resourceVersion"] == "13"
    assert reflector.get(watch.Key("ns", "b")) is None


def test_410_in_the_stream_relists_and_forgets_what_was_deleted_meanwhile():
    script = Script(
        lists=[([obj("a", "3"), obj("b", "4")], "5"), ([obj("a", "3")], "20")],
        watches=[[event("MODIFIED", "a", "6"), GONE]],
    )
    reflector, changes = run(script)
    assert script.listed == 2
    assert script.watched_from == ["5", "20"]
    assert names(reflector) == {"ns/a": "3"}, "the relist replaces the cache"
    assert reflector.lists == 2
    assert versions(changes)[2:] == [("ns/a", "3", "6"), ("ns/a", "6", "3"), ("ns/b", "4", None)], \
        "a relist reports what changed while nobody watched, deletions included"


def test_410_answer_to_the_watch_request_relists():
    script = Script(lists=[([], "5"), ([obj("a", "9")], "9")], watches=[watch.Gone("expired")])
    reflector, _ = run(script)
    assert script.watched_from == ["5", "9"]
    assert names(reflector) == {"ns/a": "9"}


def test_errors_back_off_and_retry_without_relisting():
    script = Script(
        lists=[ConnectionError("refused"), ([obj("a", "3")], "5")],
        watches=[OSError("connection reset"),
                 [event("MODIFIED", "a", "6"), {"type": "ERROR", "object": {"code": 500}}],
                 [event("MODIFIED", "a", "7")]],
    )
    reflector, _ = run(script)
    assert script.listed == 2, "the failed first list is retried"
    assert script.watched_from == ["5", "5", "6", "7"]
    assert names(reflector) == {"ns/a": "7"}


def test_the_cache_holds_the_transform_and_reports_only_its_changes():
    script = Script(
        lists=[([obj("a", "3", role="x")], "5")],
        watches=[[event("MODIFIED", "a", "6", role="x"), event("MODIFIED", "a", "7", role="y")]],
    )
    reflector, changes = run(script, transform=lambda o: o["metadata"]["labels"])
    assert reflector.snapshot() == {watch.Key("ns", "a"): {"role": "y"}}
    assert changes == [(watch.Key("ns", "a"), None, {"role": "x"}),
                       (watch.Key("ns", "a"), {"role": "x"}, {"role": "y"})]


def test_a_relist_that_changes_nothing_reports_nothing():
    script = Script(lists=[([obj("a", "3")], "5"), ([obj("a", "3")], "9")], watches=[[GONE]])
    _, changes = run(script)
    assert len(changes) == 1  # the first list's


def test_an_empty_first_list_still_says_synced():
    script = Script(lists=[([], "5")], watches=[])
    reflector, changes = run(script)  # run() checks on_synced was called once
    assert changes == [] and reflector.synced.is_set()


def test_stop_before_the_first_list_completes():
    release = threading.Event()

    def slow_lister():
        release.wait(10)
        return [], "1"

    reflector = watch.Reflector("test", lister=slow_lister, watcher=lambda v: Blocking(),
                                transform=watch.keep)
    thread = threading.Thread(target=reflector.run, daemon=True)
    thread.start()
    time.sleep(0.05)
    assert not reflector.synced.is_set()
    reflector.stop()
    release.set()
    thread.join(5)
    assert not thread.is_alive()


@pytest.mark.parametrize(("metadata", "key"), [
    ({"name": "a", "namespace": "ns"}, "ns/a"),
    ({"name": "node-1"}, "node-1"),
])
def test_object_key(metadata, key):
    assert str(watch.object_key({"metadata": metadata})) == key


def test_closing_a_watch_the_server_already_ended():
    from lvs_operator.kube import client

    class Released:
        closed = False

        def shutdown(self):
            raise ValueError("Cannot shutdown as connection has already been released to the "
                             "pool")

        def close(self):
            self.closed = True

    response = Released()
    client._Stream(response).close()  # type: ignore[arg-type]
    assert response.closed
