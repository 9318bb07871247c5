"""The VRRP plan, keepalived.conf, the shared file and the notifications (`vrrp`)."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address

import pytest

from lvs_operator import vrrp

LABELS = {"lvs.dev/director": "true"}


def members(*nodes: str, labels=LABELS) -> dict[str, vrrp.Member]:
    return {n: vrrp.Member(n, IPv4Address(f"10.0.0.{i + 1}"), labels)
            for i, n in enumerate(nodes)}


def wants(count: int, selector=LABELS) -> list[vrrp.Want]:
    return [vrrp.Want(ip_address(f"10.9.{i // 250}.{i % 250 + 1}"), selector)
            for i in range(count)]


def test_every_director_computes_the_same_instances():
    site = members("a", "b", "c")
    plans = {me: vrrp.plan(wants(60), site, me=me)[0] for me in site}
    tables = {me: {i.name: (i.vrid, i.ranking, i.vips) for i in p} for me, p in plans.items()}
    assert tables["a"] == tables["b"] == tables["c"]
    assert len(tables["a"]) == 6  # 3 x 2 ordered pairs of first and second choice


def test_vips_spread_and_a_dead_directors_vips_spread_over_the_others():
    site = members("a", "b", "c")
    instances, alone = vrrp.plan(wants(300), site, me="a")
    assert not alone
    first = {n: sum(len(i.vips) for i in instances if i.ranking[0] == n) for n in site}
    assert all(70 <= c <= 130 for c in first.values()), first
    # a's VIPs, when a dies, go to the second place of their instance: b and c both
    second = {i.ranking[1]: len(i.vips) for i in instances if i.ranking[0] == "a"}
    assert set(second) == {"b", "c"} and min(second.values()) > 25


def test_priorities_follow_the_ranking():
    (inst, *_), _ = vrrp.plan(wants(1), members("a", "b", "c"), me="a")
    assert [inst.priority(n) for n in inst.ranking] == [250, 240, 230]


def test_a_joining_director_changes_only_the_instances_it_enters():
    before, _ = vrrp.plan(wants(200), members("a", "b", "c"), me="a")
    after, _ = vrrp.plan(wants(200), members("a", "b", "c", "d"), me="a")
    of = {vip: i.name for i in before for vip, _ in i.vips}
    moved = sum(1 for i in after for vip, _ in i.vips if of[vip] != i.name)
    # a VIP keeps its instance unless d enters its first two places or its candidate set
    # changes (it does for all: d is a new candidate); the names change, the holders of
    # VIPs whose first choice is not d do not
    holder = {vip: i.ranking[0] for i in before for vip, _ in i.vips}
    kept = sum(1 for i in after for vip, _ in i.vips if i.ranking[0] == holder[vip])
    assert moved <= 200 and kept >= 130


def test_one_candidate_means_no_instance():
    site = members("a", "b")
    site["b"] = vrrp.Member("b", IPv4Address("10.0.0.2"), {})
    instances, alone = vrrp.plan(wants(3), site, me="a")
    assert instances == [] and set(alone) == {w.vip for w in wants(3)}


def test_vrids_are_stable_and_collisions_take_the_next_free_one():
    table = vrrp.assign_vrids(["x", "y", "z"], (10, 12))
    assert sorted(table.values()) == [10, 11, 12]
    assert vrrp.assign_vrids(["x", "y", "z"], (10, 12)) == table
    with pytest.raises(vrrp.VRRPError, match="LVS_VRRP_VRIDS"):
        vrrp.assign_vrids(["x", "y", "z", "w"], (10, 12))
    assert vrrp.parse_vrids("7") == (7, 7)
    for bad in ("0-3", "9-2", "x", "1-256"):
        with pytest.raises(vrrp.VRRPError):
            vrrp.parse_vrids(bad)


def test_render_unicast_with_source_checks_and_both_families():
    site = members("a", "b")
    w = [vrrp.Want(ip_address("10.9.0.1"), LABELS, "eth0"),
         vrrp.Want(ip_address("fd00::1"), LABELS, "eth0")]
    instances, _ = vrrp.plan(w, site, me="a")
    text = vrrp.render(instances, site, me="a", options=vrrp.Options(
        "eth0", IPv4Address("10.0.0.1"), advert_seconds=0.05), paths=vrrp.Paths(),
        stamp="s1")
    lines = [line.strip() for line in text.splitlines()]
    assert "# stamp s1" in lines
    assert "vrrp_notify_fifo /run/lvs-operator/keepalived/notify.fifo" in lines
    assert "vrrp_garp_master_refresh 1" in lines
    assert "advert_int 0.05" in lines and "version 3" in lines
    assert "unicast_src_ip 10.0.0.1" in lines and "check_unicast_src" in lines
    assert "10.0.0.2" in lines and "10.0.0.1" not in lines[lines.index("unicast_peer {"):]
    assert "10.9.0.1/32 dev eth0" in lines
    excluded = lines.index("virtual_ipaddress_excluded {")
    assert lines[excluded + 1] == "fd00::1/128 dev eth0"


def test_shared_file_round_trips_and_names_what_is_wrong():
    site = members("a", "b")
    instances, _ = vrrp.plan([vrrp.Want(ip_address("10.9.0.1"), LABELS, "eth0")], site,
                             me="a")
    shared = vrrp.shared(instances, site, me="a",
                         options=vrrp.Options("eth0", IPv4Address("10.0.0.1")),
                         vip_lifetime_seconds=2)
    assert shared.peers == (IPv4Address("10.0.0.2"),)
    assert vrrp.Shared.from_json(shared.to_json()) == shared
    with pytest.raises(vrrp.VRRPError, match="version"):
        vrrp.Shared.from_json('{"version": 9}')
    with pytest.raises(vrrp.VRRPError, match=r"instances\.json"):
        vrrp.Shared.from_json('{"version": 1}')


def test_notifications():
    assert vrrp.parse_notification('INSTANCE "lvs-ab" MASTER 250\n') == \
        vrrp.Notification("lvs-ab", "MASTER", 250)
    for line in ('GROUP "g" MASTER', "INSTANCE lvs-ab MASTER 250", 'INSTANCE "x" MASTER hi',
                 "", "garbage"):
        assert vrrp.parse_notification(line) is None
    assert vrrp.holds("MASTER") and vrrp.holds("MASTER_RX_LOWER_PRI")
    assert not vrrp.holds("BACKUP") and not vrrp.holds(None)


def test_write_atomically(tmp_path):
    path = tmp_path / "f"
    assert vrrp.write_atomically(path, "a")
    assert not vrrp.write_atomically(path, "a")
    assert vrrp.write_atomically(path, "b") and path.read_text() == "b"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
