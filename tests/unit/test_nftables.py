"""network.nftables: the guard's ruleset, its counter, and the nft calls (a fake nft
program records what it is given)."""

from __future__ import annotations

import json
import stat
from ipaddress import IPv4Address

import pytest

from lvs_operator.network import nftables
from lvs_operator.network.nftables import Guard, GuardError

PEERS = [IPv4Address("10.0.0.3"), IPv4Address("10.0.0.2"), IPv4Address("10.0.0.2")]


def test_the_ruleset_replaces_only_our_table_in_one_transaction():
    assert nftables.ruleset("eth0", PEERS) == (
        "table inet lvs_operator_vrrp\n"
        "delete table inet lvs_operator_vrrp\n"
        "table inet lvs_operator_vrrp {\n"
        "    counter rejected { }\n"
        "    chain input {\n"
        "        type filter hook input priority -150; policy accept;\n"
        '        iifname "eth0" ip protocol 112 ip saddr != { 10.0.0.2, 10.0.0.3 } '
        'counter name "rejected" drop\n'
        '        iifname "eth0" meta nfproto ipv6 meta l4proto 112 counter name "rejected" drop\n'
        "    }\n"
        "}\n")


def test_no_peers_drop_all_vrrp_on_the_interface():
    rules = nftables.ruleset("bond0", [])
    assert '        iifname "bond0" ip protocol 112 counter name "rejected" drop\n' in rules


@pytest.mark.parametrize("name", ["", "a" * 16, 'eth"0', "eth 0", "a/b"])
def test_interface_names_that_would_break_the_script_are_refused(name):
    with pytest.raises(ValueError, match="not a valid interface name"):
        nftables.ruleset(name, PEERS)


def counter_json(packets: int) -> str:
    return json.dumps({"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"counter": {"family": "inet", "name": "rejected", "table": "lvs_operator_vrrp",
                     "handle": 2, "packets": packets, "bytes": 40 * packets}}]})


def test_the_counter_is_read_from_nfts_json():
    assert nftables.parse_counter(counter_json(54)) == 54
    with pytest.raises(GuardError, match="listed no counter 'rejected'"):
        nftables.parse_counter('{"nftables": [{"metainfo": {}}]}')
    with pytest.raises(GuardError, match="reading nft's counter"):
        nftables.parse_counter("garbage")


@pytest.fixture
def fake_nft(tmp_path):
    """An nft that logs its arguments and input, answers `list counter` with the packets
    in `counter` (fails when that file is missing: no table), and fails when `fail` exists."""
    log, counter = tmp_path / "calls", tmp_path / "counter"
    program = tmp_path / "nft"
    program.write_text(f"""#!/bin/sh
[ -e {tmp_path}/fail ] && {{ echo 'Error: Operation not permitted' >&2; exit 1; }}
echo "ARGS $*" >> {log}
if [ "$1" = -f ]; then cat >> {log}; exit 0; fi
[ -e {counter} ] || {{ echo 'Error: No such file or directory' >&2; exit 1; }}
cat {counter}
""")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program, log, counter


def test_apply_runs_the_ruleset_and_keeps_the_counter_monotonic(fake_nft):
    program, log, counter = fake_nft
    guard = Guard(nft=str(program))
    guard.apply("eth0", PEERS)  # no table yet: nothing to carry
    counter.write_text(counter_json(5))
    assert guard.rejected() == 5
    guard.apply("eth0", PEERS[:1])  # replaced: the new table counts from 0
    counter.write_text(counter_json(2))
    assert guard.rejected() == 7
    calls = log.read_text()
    assert calls.count("ARGS -f -\n") == 2
    assert "ip saddr != { 10.0.0.3 }" in calls
    guard.remove()
    assert log.read_text().endswith(
        "ARGS -f -\ntable inet lvs_operator_vrrp\ndelete table inet lvs_operator_vrrp\n")


def test_nft_failures_say_what_to_do(fake_nft, tmp_path):
    program, _, _ = fake_nft
    (tmp_path / "fail").touch()
    with pytest.raises(GuardError, match="nft exited 1: Error: Operation not permitted; "
                       "nft needs CAP_NET_ADMIN"):
        Guard(nft=str(program)).apply("eth0", PEERS)
    with pytest.raises(GuardError, match="not installed: install nftables in the image, "
                       "or set LVS_VRRP_GUARD=false"):
        Guard(nft=str(tmp_path / "missing")).apply("eth0", PEERS)
