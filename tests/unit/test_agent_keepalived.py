"""The agent's side of keepalived (`agent.keepalived.Driver`): files written, checks, the
notify FIFO."""

from __future__ import annotations

import os
import threading
import time
from ipaddress import IPv4Address, ip_address

from lvs_operator import vrrp
from lvs_operator.agent import keepalived
from lvs_operator.agent.settings import VRRPSettings

LABELS = {"d": "1"}
SITE = {n: vrrp.Member(n, IPv4Address(f"10.0.0.{i}"), LABELS)
        for i, n in enumerate(("a", "b"), start=1)}
VIP = ip_address("10.9.0.1")


def driver(tmp_path, check=lambda text: "", clock=time.monotonic):
    woken = threading.Event()
    d = keepalived.Driver(VRRPSettings(directory=tmp_path), node="a", on_change=woken.set,
                          check=check, clock=clock)
    return d, woken


def test_apply_writes_the_shared_file_then_the_configuration(tmp_path):
    d, _ = driver(tmp_path)
    plan = d.plan([vrrp.Want(VIP, LABELS)], SITE, address=IPv4Address("10.0.0.1"),
                  interface="eth0")
    assert not plan.problem and set(plan.instance_of) == {VIP}
    assert d.apply(plan, SITE, {VIP: "eth0"}) == ""
    shared = vrrp.Shared.from_json((tmp_path / "instances.json").read_text())
    assert shared.peers == (IPv4Address("10.0.0.2"),)
    assert [vips for _, vips in shared.instances.values()] == [((VIP, "eth0"),)]
    assert "10.9.0.1/32 dev eth0" in (tmp_path / "keepalived.conf").read_text()


def test_a_refused_configuration_runs_no_instance_and_says_why(tmp_path):
    d, _ = driver(tmp_path, check=lambda text: "(Line 9) Unknown interface!")
    plan = d.plan([vrrp.Want(VIP, LABELS)], SITE, address=IPv4Address("10.0.0.1"),
                  interface="eth9")
    problem = d.apply(plan, SITE, {VIP: "eth9"})
    assert problem == "keepalived refuses the configuration: (Line 9) Unknown interface!"
    assert "vrrp_instance" not in (tmp_path / "keepalived.conf").read_text()
    assert vrrp.Shared.from_json((tmp_path / "instances.json").read_text()).instances == {}


def test_no_vrrp_address_is_an_error_only_where_an_instance_is_needed(tmp_path):
    d, _ = driver(tmp_path)
    plan = d.plan([vrrp.Want(VIP, LABELS)], SITE, address=None, interface="eth0")
    assert "LVS_VRRP_ADDRESS" in plan.problem and "eth0" in plan.problem
    alone = d.plan([vrrp.Want(VIP, LABELS)], {"a": SITE["a"]}, address=None,
                   interface="eth0")
    assert not alone.problem and set(alone.alone) == {VIP}


def test_keepalived_silent_after_a_change_is_reported(tmp_path):
    now = [100.0]
    d, _ = driver(tmp_path, clock=lambda: now[0])
    plan = d.plan([vrrp.Want(VIP, LABELS)], SITE, address=IPv4Address("10.0.0.1"),
                  interface="eth0")
    assert d.apply(plan, SITE, {VIP: "eth0"}) == ""
    now[0] += keepalived.ANSWER_SECONDS + 1
    assert "keepalived container" in d.apply(plan, SITE, {VIP: "eth0"})
    d._note(f'INSTANCE "{plan.instances[0].name}" BACKUP 240')
    assert d.apply(plan, SITE, {VIP: "eth0"}) == ""


def test_notifications_from_the_fifo_wake_the_loop(tmp_path):
    d, woken = driver(tmp_path)
    d.start()
    try:
        fd = os.open(tmp_path / "notify.fifo", os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b'INSTANCE "lvs-x" BACKUP 240\nINSTANCE "lvs-x" MAST')
        os.write(fd, b'ER 240\nGROUP "g" MASTER\n')
        os.close(fd)
        deadline = time.monotonic() + 5
        while d.states().get("lvs-x") != "MASTER" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.states() == {"lvs-x": "MASTER"}
        assert woken.is_set() and d.transitions == 1
    finally:
        d.stop()


def test_the_real_keepalived_check_names_the_problem(tmp_path):
    d = keepalived.Driver(VRRPSettings(directory=tmp_path, binary="/nonexistent/keepalived"),
                          node="a", on_change=lambda: None)
    assert "LVS_KEEPALIVED_BINARY" in d._keepalived_check("global_defs {\n}\n")


def test_a_replaced_fifo_is_read_again(tmp_path, monkeypatch):
    monkeypatch.setattr(keepalived, "REOPEN_CHECK_SECONDS", 0.0)
    d, _ = driver(tmp_path)
    d.start()
    try:
        # keepalived made its own FIFO (it started first) and made it anew on a restart
        (tmp_path / "notify.fifo").unlink()
        os.mkfifo(tmp_path / "notify.fifo")
        deadline = time.monotonic() + 5
        while d.states().get("lvs-y") != "MASTER" and time.monotonic() < deadline:
            try:
                fd = os.open(tmp_path / "notify.fifo", os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # not open for reading yet
                time.sleep(0.1)
                continue
            os.write(fd, b'INSTANCE "lvs-y" MASTER 250\n')
            os.close(fd)
            time.sleep(0.6)
        assert d.states() == {"lvs-y": "MASTER"}
    finally:
        d.stop()


def test_a_new_instance_waits_on_the_directors_that_are_not_first(tmp_path):
    now = [100.0]
    woken = threading.Event()
    plan_for = {}
    for node in ("a", "b"):
        d = keepalived.Driver(VRRPSettings(directory=tmp_path / node, preempt_delay_seconds=5),
                              node=node, on_change=woken.set, check=lambda text: "",
                              clock=lambda: now[0])
        plan = d.plan([vrrp.Want(VIP, LABELS)], SITE, address=SITE[node].address,
                      interface="eth0")
        (tmp_path / node).mkdir()
        assert d.apply(plan, SITE, {VIP: "eth0"}) == ""
        plan_for[node] = (d, plan)
    first = plan_for["a"][1].instances[0].ranking[0]
    other = "b" if first == "a" else "a"
    assert "vrrp_instance" in (tmp_path / first / "keepalived.conf").read_text()
    assert "vrrp_instance" not in (tmp_path / other / "keepalived.conf").read_text()
    d, plan = plan_for[other]
    now[0] += 5
    assert d.apply(plan, SITE, {VIP: "eth0"}) == ""
    assert "vrrp_instance" in (tmp_path / other / "keepalived.conf").read_text()
    # an agent that restarts keeps what the file already runs
    again = keepalived.Driver(VRRPSettings(directory=tmp_path / other), node=other,
                              on_change=lambda: None, check=lambda text: "",
                              clock=lambda: now[0])
    assert again.apply(plan, SITE, {VIP: "eth0"}) == ""
    assert "vrrp_instance" in (tmp_path / other / "keepalived.conf").read_text()


def test_assumed_states_give_way_to_keepalived(tmp_path):
    d, _ = driver(tmp_path)
    d.assume({"lvs-a": "MASTER", "lvs-b": "BACKUP"})
    d._note('INSTANCE "lvs-b" MASTER 250')
    d.assume({"lvs-b": "BACKUP"})
    assert d.states() == {"lvs-a": "MASTER", "lvs-b": "MASTER"}
