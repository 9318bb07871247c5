"""agent.loop with health checks: a failing real server goes to weight 0 (kept, not
drained), comes back at its weight, and the loop reports it in status.directors, an Event
and the metrics. The API is in memory, the kernel fake, the probe scripted."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import replace
from ipaddress import ip_address
from typing import Any

import prometheus_client
from test_agent_loop import KEY, NODE, FakeApi, FakeVips, eventually, virtualserver

from lvs_operator.agent import health, loop
from lvs_operator.agent.settings import (
    DirectorSettings,
    HASettings,
    Settings,
    SyncSettings,
    VRRPSettings,
)
from lvs_operator.ipvs.fake import FakeIPVS


class Api(FakeApi):
    def __init__(self, objects=()):
        super().__init__(objects)
        self.events: list[dict[str, Any]] = []

    def create_event(self, event):
        self.events.append(event)
        return event


class Probe:
    """Fails the addresses in `failing`."""

    def __init__(self) -> None:
        self.failing: set[str] = set()

    async def __call__(self, target: health.Target) -> health.Result:
        if str(target.address) in self.failing:
            return health.Result(False, "refused")
        return health.Result(True)


class FastMonitor(health.Monitor):
    """Checks every 20 ms whatever the spec says (it allows whole seconds only)."""

    def update(self, targets):
        fast: Any = 0.02
        super().update(replace(t, check=replace(t.check, interval_seconds=fast))
                       for t in targets)


def checked(reals) -> dict[str, Any]:
    obj = virtualserver(reals)
    obj["spec"]["healthCheck"] = {"tcp": {}, "intervalSeconds": 1, "timeoutSeconds": 1,
                                  "failureThreshold": 1}
    return obj


@contextlib.contextmanager
def running(api, ipvs, tmp_path, probe) -> Iterator[loop.Agent]:
    settings = Settings(node=NODE, state_file=tmp_path / "owned.json", metrics_address="",
                        sync=SyncSettings(resync_seconds=30.0, min_interval_seconds=0.0,
                                          retry_seconds=0.1),
                        director=DirectorSettings(sysctls=None),
                        ha=HASettings(vrrp=VRRPSettings(directory=tmp_path / "keepalived")))
    agent = loop.Agent(settings, api=api, ipvs=ipvs, vips=FakeVips(), sysctls=lambda s: [],
                       default_interface=lambda: None)
    agent.health = FastMonitor(on_change=agent._wake.set, probe=probe)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        yield agent
    finally:
        agent.stop()
        thread.join(10)
        assert not thread.is_alive()


def weights(agent) -> dict[str, int] | None:
    service = agent.table().get(KEY)
    return None if service is None else {str(r.address): r.weight
                                         for r in service.reals.values()}


def reported(api) -> list[Any]:
    return [p["status"]["directors"][NODE].get("unhealthy") for p in api.patches]


def test_unhealthy_goes_to_weight_0_and_comes_back(tmp_path):
    probe = Probe()
    probe.failing.add("10.0.0.2")
    api = Api([checked([1, 2])])
    with running(api, FakeIPVS(), tmp_path, probe) as agent:
        eventually(lambda: weights(agent) == {"10.0.0.1": 1, "10.0.0.2": 0})
        eventually(lambda: ["10.0.0.2:80"] in reported(api))
        assert agent.health.unhealthy() == {("shop/web", ip_address("10.0.0.2"), 80)}
        eventually(lambda: [e["reason"] for e in api.events] == ["RealServerUnhealthy"])
        assert "10.0.0.2:80" in api.events[0]["note"]
        text = prometheus_client.generate_latest(agent.registry).decode()
        assert ('lvs_real_server_healthy{name="web",namespace="shop",port="80",protocol="TCP",'
                'real="10.0.0.2:80",vip="192.0.2.20"} 0.0\n') in text
        assert ('lvs_real_server_healthy{name="web",namespace="shop",port="80",protocol="TCP",'
                'real="10.0.0.1:80",vip="192.0.2.20"} 1.0\n') in text

        probe.failing.clear()  # recovered: weight back; the next sync reports none
        eventually(lambda: weights(agent) == {"10.0.0.1": 1, "10.0.0.2": 1})
        eventually(lambda: reported(api)[-1] is None)
        assert len(api.events) == 1, "at most one health Event per 30 s"


def test_without_health_check_no_checks(tmp_path):
    probe = Probe()
    probe.failing.add("10.0.0.2")
    api = Api([virtualserver([1, 2])])
    with running(api, FakeIPVS(), tmp_path, probe) as agent:
        eventually(lambda: weights(agent) == {"10.0.0.1": 1, "10.0.0.2": 1})
        eventually(lambda: api.patches)
        assert agent.health.targets() == {}
        # Every report (a director may report Standby before its election settles, then
        # Active) lists no unhealthy real server.
        assert set(reported(api)) == {None}
