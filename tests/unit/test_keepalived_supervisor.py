"""keepalived.supervisor: waiting for the agent's files, starting keepalived, reloading it
once per configuration change, signals, clean-up; with a fake keepalived process, a fake
guard and the watchdog on a fake kernel. Also the settings and the CLI wiring."""

from __future__ import annotations

import signal
import threading
import time
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from test_keepalived_watchdog import VIP, FakeAddresses, FakeCapture, shared

from lvs_operator import cli, vrrp
from lvs_operator.keepalived import supervisor
from lvs_operator.keepalived.metrics import Metrics
from lvs_operator.keepalived.watchdog import Watchdog
from lvs_operator.network.nftables import Guard, GuardError

CONFIG = "# stamp 1\nvrrp_instance lvs-a {}\n"


class FakeKeepalived:
    """A keepalived child: exits 0 on SIGTERM/SIGINT, records every signal."""

    def __init__(self, argv) -> None:
        self.argv = argv
        self.pid = 4242
        self.signals: list[int] = []
        self.status: int | None = None

    def poll(self):
        return self.status

    def send_signal(self, sig):
        self.signals.append(sig)
        if sig in (signal.SIGTERM, signal.SIGINT):
            self.status = 0


class FakeGuard(Guard):
    def __init__(self, *, fail: bool = False) -> None:
        super().__init__(nft="/nonexistent/nft")
        self.fail = fail
        self.calls: list[tuple[object, ...]] = []

    def apply(self, interface, peers):
        self.calls.append(("apply", interface, tuple(peers)))
        if self.fail:
            raise GuardError("installing the VRRP guard: nft exited 1: no")

    def remove(self):
        self.calls.append(("remove",))

    def rejected(self):
        return 0


def eventually(check, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Rig:
    """A Supervisor on tmp_path, run in a thread."""

    def __init__(self, tmp_path: Path, *, guard: FakeGuard | None = None,
                 refuse: str = "") -> None:
        self.paths = vrrp.Paths(tmp_path)
        self.children: list[FakeKeepalived] = []
        self.kernel = FakeAddresses({"eth0": set(), "eth1": set()})
        self.metrics = Metrics()
        self.guard = guard if guard is not None else FakeGuard()
        self.checked = 0

        def check(path: Path):
            self.checked += 1
            return "keepalived -t exited 5: Unknown keyword" if refuse and \
                refuse in path.read_text() else None

        def spawn(argv):
            self.children.append(FakeKeepalived(argv))
            return self.children[-1]

        self.supervisor = supervisor.Supervisor(
            supervisor.Settings(dir=tmp_path), metrics=self.metrics,
            watchdog=Watchdog(self.metrics, addresses=self.kernel, capture=FakeCapture),
            guard=self.guard, spawn=spawn, check=check)
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.supervisor.run()))
        self.thread.start()

    def write(self, *, config: str | None = CONFIG, data: vrrp.Shared | None = None) -> None:
        vrrp.write_atomically(self.paths.instances, (data or shared()).to_json())
        if config is not None:
            vrrp.write_atomically(self.paths.config, config)

    @property
    def child(self) -> FakeKeepalived:
        eventually(lambda: self.children, "keepalived to be started")
        return self.children[0]

    def ready(self) -> None:
        """What keepalived does once it runs: its pid file (and its VRRP process's)."""
        self.paths.pid.write_text("4242\n")
        self.paths.vrrp_pid.write_text("4243\n")

    def finish(self, timeout: float = 5.0) -> int:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the supervisor did not return"
        return self.result[0]


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(supervisor, "POLL_SECONDS", 0.01)


def test_it_waits_for_both_files_then_starts_keepalived(tmp_path, caplog):
    caplog.set_level("INFO")
    rig = Rig(tmp_path)
    eventually(lambda: "waiting for" in caplog.text, "the waiting message")
    assert str(rig.paths.instances) in caplog.text and str(rig.paths.config) in caplog.text
    rig.write(config=None)
    time.sleep(0.1)
    assert rig.children == []
    vrrp.write_atomically(rig.paths.config, CONFIG)
    assert rig.child.argv == ["keepalived", "-n", "-l", "-D", "--vrrp",
                              "-f", f"{tmp_path}/keepalived.conf",
                              "-p", f"{tmp_path}/keepalived.pid", "-r", f"{tmp_path}/vrrp.pid"]
    assert rig.guard.calls == [("apply", "eth0", (IPv4Address("10.0.0.2"),))]
    assert rig.metrics.value("lvs_keepalived_up") == 1
    rig.supervisor.request_stop(signal.SIGTERM)
    assert rig.finish() == 0


def test_a_stop_before_the_files_exist_ends_it_without_keepalived(tmp_path):
    rig = Rig(tmp_path)
    rig.supervisor.request_stop(signal.SIGTERM)
    assert rig.finish() == 0
    assert rig.children == [] and rig.guard.calls == []


def test_stale_pid_files_are_removed_before_keepalived_starts(tmp_path):
    (tmp_path / "keepalived.pid").write_text("1\n")
    (tmp_path / "vrrp.pid").write_text("7\n")
    rig = Rig(tmp_path)
    rig.write()
    rig.child  # noqa: B018  (waits for the start)
    assert not rig.paths.pid.exists() and not rig.paths.vrrp_pid.exists()
    rig.supervisor.request_stop(signal.SIGTERM)
    rig.finish()


def test_a_changed_configuration_reloads_keepalived_once(tmp_path):
    rig = Rig(tmp_path)
    rig.write()
    child = rig.child
    vrrp.write_atomically(rig.paths.config, CONFIG + "# changed\n")
    time.sleep(0.1)
    assert child.signals == [], "no SIGHUP before keepalived's VRRP process runs"
    rig.ready()
    eventually(lambda: child.signals, "a SIGHUP")
    time.sleep(0.1)  # several more polls of the same content
    assert child.signals == [signal.SIGHUP]
    assert rig.metrics.value("lvs_keepalived_reloads_total") == 1
    rig.supervisor.request_stop(signal.SIGTERM)
    assert rig.finish() == 0


def test_a_configuration_keepalived_refuses_is_not_loaded(tmp_path, caplog):
    rig = Rig(tmp_path, refuse="BROKEN")
    rig.write()
    child = rig.child
    rig.ready()
    vrrp.write_atomically(rig.paths.config, CONFIG + "BROKEN\n")
    eventually(lambda: "is not loaded" in caplog.text, "the refusal in the log")
    checked = rig.checked
    time.sleep(0.1)
    assert child.signals == []
    assert rig.checked == checked, "the same refused content is checked once"
    assert caplog.text.count("is not loaded") == 1
    vrrp.write_atomically(rig.paths.config, CONFIG + "# fixed\n")
    eventually(lambda: child.signals == [signal.SIGHUP], "the fixed one loaded")
    rig.supervisor.request_stop(signal.SIGTERM)
    rig.finish()


def test_sigterm_is_passed_on_and_everything_is_cleaned_up(tmp_path):
    rig = Rig(tmp_path)
    rig.write()
    child = rig.child
    rig.kernel.held["eth0"].add(VIP)  # keepalived failed to remove it on its way out
    rig.supervisor.request_stop(signal.SIGTERM)
    assert rig.finish() == 0
    assert child.signals == [signal.SIGTERM]
    assert rig.kernel.held["eth0"] == set()
    assert rig.guard.calls[-1] == ("remove",)
    assert rig.metrics.value("lvs_keepalived_up") == 0


def test_keepalived_exiting_on_its_own_deletes_its_vips_and_fails(tmp_path, caplog):
    rig = Rig(tmp_path)
    rig.write()
    child = rig.child
    rig.kernel.held["eth0"].update({VIP})
    child.status = -signal.SIGKILL
    assert rig.finish() == 128 + signal.SIGKILL
    assert rig.kernel.held["eth0"] == set()
    assert rig.metrics.value("lvs_vrrp_vips_deleted_total", reason="keepalived_exited") == 1
    assert "keepalived exited on its own (killed by SIGKILL)" in caplog.text
    assert ("remove",) not in rig.guard.calls  # the restart replaces it


def test_keepalived_exiting_0_on_its_own_still_fails(tmp_path):
    rig = Rig(tmp_path)
    rig.write()
    rig.child.status = 0
    assert rig.finish() == 1


def test_a_keepalived_that_cannot_start_fails_and_cleans_up(tmp_path, caplog):
    rig = Rig(tmp_path)

    def missing(argv):
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    rig.supervisor._spawn = missing
    rig.write()
    rig.kernel.held["eth0"].add(VIP)  # an earlier keepalived's, never refreshed again
    assert rig.finish() == 1
    assert "cannot start keepalived: [Errno 2] No such file or directory: 'keepalived' (is " \
        "keepalived installed?" in caplog.text
    assert rig.kernel.held["eth0"] == set()


def test_a_guard_that_cannot_be_installed_is_fatal(tmp_path, caplog):
    rig = Rig(tmp_path, guard=FakeGuard(fail=True))
    rig.write()
    assert rig.finish() == 1
    assert rig.children == []
    assert "nft exited 1: no; exiting" in caplog.text


def test_the_guard_follows_the_peers(tmp_path):
    rig = Rig(tmp_path)
    rig.write()
    rig.child  # noqa: B018
    same = vrrp.Shared(interface="eth0", advert_seconds=0.2,
                       peers=(IPv4Address("10.0.0.2"),), vip_lifetime_seconds=3, instances={})
    rig.write(config=None, data=same)  # new content, same interface and peers
    time.sleep(0.1)
    assert len(rig.guard.calls) == 1
    more = vrrp.Shared(interface="eth0", advert_seconds=0.2,
                       peers=(IPv4Address("10.0.0.2"), IPv4Address("10.0.0.4")),
                       vip_lifetime_seconds=3, instances={})
    rig.write(config=None, data=more)
    eventually(lambda: len(rig.guard.calls) == 2, "the guard re-applied")
    assert rig.guard.calls[1] == ("apply", "eth0", more.peers)
    rig.supervisor.request_stop(signal.SIGTERM)
    rig.finish()


def test_a_guard_update_that_fails_stops_keepalived_and_fails(tmp_path):
    rig = Rig(tmp_path)
    rig.write()
    child = rig.child
    rig.guard.fail = True
    rig.write(config=None, data=shared(interface="eth1"))
    assert rig.finish() == 1
    assert child.signals == [signal.SIGTERM]


# --- settings and the command line -----------------------------------------------------------

def test_settings_come_from_the_command_line_then_the_environment():
    env = {"LVS_KEEPALIVED_DIR": "/run/ka", "LVS_KEEPALIVED_BINARY": "/usr/sbin/keepalived",
           "LVS_KEEPALIVED_METRICS_ADDRESS": "[::]:9700", "LVS_VRRP_GUARD": "False"}
    assert supervisor.settings_from(env) == supervisor.Settings(
        dir=Path("/run/ka"), binary="/usr/sbin/keepalived", metrics=("::", 9700), guard=False)
    assert supervisor.settings_from(env, dir="/x", binary="ka", metrics_address="") == \
        supervisor.Settings(dir=Path("/x"), binary="ka", metrics=None, guard=False)
    assert supervisor.settings_from({}) == supervisor.Settings(
        dir=Path("/run/lvs-operator/keepalived"), binary="keepalived",
        metrics=("0.0.0.0", 9641), guard=True)


@pytest.mark.parametrize(("env", "message"), [
    ({"LVS_VRRP_GUARD": "maybe"}, "LVS_VRRP_GUARD='maybe': write true or false"),
    ({"LVS_KEEPALIVED_METRICS_ADDRESS": "9641"}, "write HOST:PORT"),
    ({"LVS_KEEPALIVED_METRICS_ADDRESS": "h:99999"}, "write HOST:PORT"),
])
def test_bad_settings_are_named(env, message):
    with pytest.raises(supervisor.SettingsError, match=message):
        supervisor.settings_from(env)


def test_the_cli_runs_the_supervisor_with_its_settings(monkeypatch):
    seen: list[supervisor.Settings] = []

    def run(settings):
        seen.append(settings)
        return 3

    monkeypatch.setattr(supervisor, "run", run)
    monkeypatch.setenv("LVS_VRRP_GUARD", "false")
    assert cli.main(["keepalived", "--dir", "/d", "--keepalived", "/k",
                     "--metrics-address", "127.0.0.1:1"]) == 3
    assert seen == [supervisor.Settings(dir=Path("/d"), binary="/k",
                                        metrics=("127.0.0.1", 1), guard=False)]
    monkeypatch.setenv("LVS_VRRP_GUARD", "nah")
    assert cli.main(["keepalived"]) == cli.EXIT_USAGE
