"""The image `make image` built, run as the chart runs its containers (`make test-image`).

Each case is one container of charts/lvs-operator: its args after the image's entrypoint and
its securityContext (user, capabilities, read-only root filesystem). The agent pod's
keepalived container also runs Debian's keepalived 2.2 and `nft`: keepalived takes and gives
back a VIP, and nft loads a guard table, with that container's privileges. The node tier
(tests/node) runs the same image as real pods; this tier checks the image alone, in seconds.
"""

from __future__ import annotations

import os
import re

import containers
import pytest
from containers import SecurityContext

IMAGE = os.environ.get("IMAGE", "lvs-operator:0.1.0")

# The chart's securityContexts (charts/lvs-operator/templates/{controller,agent}.yaml); the
# agent pod's keepalived container has the agent's.
IMAGE_USER = SecurityContext(user="65532:65532")
CONTROLLER = SecurityContext(user="65532:65532")
AGENT = SecurityContext(user="0:0", capabilities=("NET_ADMIN", "NET_RAW"))
KEEPALIVED = AGENT

CASES = [
    pytest.param([], IMAGE_USER, "usage: lvs-operator ", id="default-cmd"),
    pytest.param(["--help"], IMAGE_USER, "usage: lvs-operator ", id="help"),
    pytest.param(["controller", "--help"], CONTROLLER, "usage: lvs-operator controller ",
                 id="controller"),
    pytest.param(["agent", "--help"], AGENT, "usage: lvs-operator agent ", id="agent"),
    pytest.param(["keepalived", "--help"], KEEPALIVED, "usage: lvs-operator keepalived ",
                 id="keepalived"),
    pytest.param(["realserver-init", "--help"], SecurityContext(
        user="0:0", capabilities=("NET_ADMIN",)), "usage: lvs-operator realserver-init ",
        id="realserver-init"),
]


@pytest.mark.parametrize(("args", "context", "usage"), CASES)
def test_command_runs_as_the_chart_runs_it(args: list[str], context: SecurityContext,
                                           usage: str) -> None:
    result = containers.run(IMAGE, args, context)
    assert result.returncode == 0, (
        f"lvs-operator {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    assert result.stdout.startswith(usage), result.stdout[:500]


def test_default_user_and_read_only_root() -> None:
    """The image's own user is 65532 (the controller's runAsNonRoot needs a non-root one)
    and nothing outside /tmp is writable with the chart's read-only root filesystem."""
    result = containers.run(
        IMAGE, ["-c", "id -u; touch /opt/x 2>/dev/null && echo writable || echo read-only; "
                "touch /tmp/x && echo tmp-writable"], IMAGE_USER, entrypoint="sh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["65532", "read-only", "tmp-writable"]


def test_the_chart_users_have_names() -> None:
    """kopf (the controller) names itself after the user (getpass.getuser()), which raises
    for a uid without a passwd entry: the controller's 65532 must have one."""
    result = containers.run(IMAGE, ["-c", "import getpass; print(getpass.getuser())"],
                            CONTROLLER, entrypoint="python3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["nonroot"]


def test_keepalived_is_debians_2_2() -> None:
    """The keepalived container runs Debian's keepalived: 2.2.x is the version whose VRRP the
    project measured (advert_int down to 0.01 s, the FIFO's line format, no valid_lft)."""
    result = containers.run(IMAGE, ["--version"], KEEPALIVED, entrypoint="keepalived")
    assert result.returncode == 0, result.stderr[-2000:]
    # keepalived prints its version on stderr: "Keepalived v2.2.7 (01/16,2022)".
    output = result.stdout + result.stderr
    assert re.search(r"^Keepalived v2\.2\.\d+ ", output, re.MULTILINE), output[:500]


def test_nft_runs() -> None:
    """`nft` (the guard that drops VRRP adverts from non-peers) runs as that container."""
    result = containers.run(IMAGE, ["--version"], KEEPALIVED, entrypoint="nft")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("nftables v"), result.stdout[:500]


# keepalived as the keepalived container runs it (`-n -l -D --vrrp`, its PID files in the
# shared folder, not /run: the root filesystem is read-only), in the container's own network
# namespace on a veth pair: as sole master it adds the VIP (NET_ADMIN), sends its adverts and
# gratuitous ARP (NET_RAW), reports through the notify FIFO, and takes the VIP away when
# stopped. Then the guard's table as `nft` loads it.
KEEPALIVED_RUN = r"""
set -e
ip link add vrrp0 type veth peer name vrrp1
ip addr add 192.0.2.1/24 dev vrrp0
ip link set vrrp1 up
ip link set vrrp0 up
dir=/tmp/keepalived
mkdir $dir
mkfifo $dir/notify.fifo
cat $dir/notify.fifo >$dir/events &
cat >$dir/keepalived.conf <<CONF
global_defs {
    vrrp_notify_fifo $dir/notify.fifo
}
vrrp_instance VI_1 {
    interface vrrp0
    state MASTER
    priority 255
    virtual_router_id 51
    version 3
    advert_int 0.1
    unicast_src_ip 192.0.2.1
    unicast_peer {
        192.0.2.2
    }
    virtual_ipaddress {
        192.0.2.50/32
    }
}
CONF
keepalived -n -l -D --vrrp -f $dir/keepalived.conf -p $dir/keepalived.pid -r $dir/vrrp.pid \
    >$dir/log 2>&1 &
pid=$!
for _ in $(seq 100); do
    ip -o addr show dev vrrp0 | grep -q 192.0.2.50 && break
    sleep 0.1
done
ip -o -4 addr show dev vrrp0 | awk '{print "holding", $4}'
kill -TERM $pid
wait $pid
ip -o -4 addr show dev vrrp0 | awk '{print "stopped", $4}'
sleep 0.2
cat $dir/events
grep -iE 'permission|read-only|denied|cannot|unable|fail' $dir/log | sed 's/^/problem /'
nft -f - <<NFT
table inet lvs_vrrp_test {
    chain input {
        type filter hook input priority -150; policy accept;
        ip protocol 112 ip saddr != { 192.0.2.2 } counter drop
    }
}
NFT
nft list table inet lvs_vrrp_test | grep -q 'saddr != 192.0.2.2' && echo guard loaded
"""


def test_keepalived_holds_a_vip_with_the_containers_privileges() -> None:
    result = containers.run(IMAGE, ["-c", KEEPALIVED_RUN], KEEPALIVED, entrypoint="sh")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    assert result.stdout.splitlines() == [
        "holding 192.0.2.1/24", "holding 192.0.2.50/32",
        "stopped 192.0.2.1/24",
        'INSTANCE "VI_1" MASTER 255', 'INSTANCE "VI_1" STOP 255',
        "guard loaded",
    ], result.stdout
