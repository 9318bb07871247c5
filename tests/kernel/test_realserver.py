"""realserver-init in the real kernel, run as the init container runs it.

The setups that must succeed run `python -m lvs_operator.cli realserver-init ...` in the real
server's namespace as uid 65534 holding only CAP_NET_ADMIN (ambient), with /proc/sys
bind-mounted read-only: what a pod's init container gets. The results are then read back as
root with independent tools, and checked with traffic from a neighbour namespace.

Second runs (idempotence) and failures call `realserver.setup` in-process (in a thread
inside the namespace, as root) instead: a confined run costs a Python start plus the
pyroute2 import, up to a minute under the VM's software emulation on a busy machine, and
what they check is the logic and the diagnosis, not the confinement (which the first runs
prove; setup never writes /proc/sys, so running as root hides nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest
from netlab import Lab, Netns, http_get

from lvs_operator.realserver import SetupError, setup

pytestmark = pytest.mark.kernel

REPO = Path(__file__).resolve().parents[2]
NOBODY = "65534"
# Only CAP_NET_ADMIN, in every set that could give another capability back.
CONFINE = [
    "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
    "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
    "--bounding-set=-all,+net_admin",
]
# A container runtime mounts /proc/sys read-only; do the same in a private mount namespace.
READ_ONLY_PROC_SYS = (
    'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"'
)
ENV = [
    "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONDONTWRITEBYTECODE=1",
    f"PYTHONPATH={REPO / 'operator'}:{sysconfig.get_paths()['purelib']}",
]
CAP_NET_ADMIN = 1 << 12


@pytest.fixture(scope="module")
def python() -> str:
    """An interpreter uid 65534 may run (the venv's lives under /root, mode 0700 here)."""
    candidates = [os.path.realpath(sys.executable), "/usr/bin/python3"]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in candidates:
        probe = subprocess.run(
            # Cheap on purpose (no pyroute2 import: seconds under emulation): the version,
            # and that the packages can be found and read by that user.
            [*CONFINE, *ENV, candidate, "-c",
             f"import sys, importlib.util as u, lvs_operator; "
             f"assert sys.version.startswith('{version}.'); "
             f"assert u.find_spec('pyroute2') is not None"],
            capture_output=True, text=True, check=False,
        )
        if probe.returncode == 0:
            return candidate
    pytest.fail(f"no Python {version} runnable by uid {NOBODY} with the venv's packages "
                f"among {candidates}")


def confined(ns: Netns, python: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python ARGS` in `ns` as the init container would run: see the module doc."""
    return ns.run(
        ["unshare", "--mount", "sh", "-c", READ_ONLY_PROC_SYS, "sh", *CONFINE, *ENV, python,
         *args],
        check=False, timeout=120,
    )


def realserver_init(ns: Netns, python: str, mode: str, *vips: str
                    ) -> subprocess.CompletedProcess[str]:
    vip_args = [a for vip in vips for a in ("--vip", vip)]
    return confined(ns, python, "-m", "lvs_operator.cli", "realserver-init", *vip_args,
                    "--mode", mode)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def conf(ns: Netns, ifname: str, name: str) -> str:
    return ns.sysctl(f"/proc/sys/net/ipv4/conf/{ifname}/{name}")


def addresses(ns: Netns, ifname: str) -> dict[str, int]:
    info = json.loads(ns.ip("-j", "address", "show", "dev", ifname))[0]["addr_info"]
    return {a["local"]: a["prefixlen"] for a in info}


def link(ns: Netns, ifname: str) -> dict[str, Any]:
    links: list[dict[str, Any]] = json.loads(ns.ip("-j", "-d", "link", "show", "dev", ifname))
    return links[0]


def test_the_confinement_is_what_the_init_container_gets(lab: Lab, python: str):
    ns = lab.netns("rs")
    script = (
        "import os\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "print(os.getuid(), int(status['CapEff'], 16))\n"
        "try:\n"
        "    open('/proc/sys/net/ipv4/conf/lo/arp_ignore', 'w').write('1')\n"
        "except OSError as e:\n"
        "    print(e.errno)\n"
    )
    uid, caps, error = ok(confined(ns, python, "-c", script)).split()
    assert (uid, int(caps), int(error)) == (NOBODY, CAP_NET_ADMIN, 30)  # EROFS


def test_dr_real_server(lab: Lab, python: str):
    lan = lab.lan(["client", "rs"])
    client, rs = lan["client"], lan["rs"]
    # VIPs inside the client's on-link subnets: the client asks ARP / ND for them directly,
    # so a real server that answered would steal the VIP from the director.
    vip4, vip6 = "10.200.0.100", "fd00:200::100"
    server = lab.http_server(rs, port=8080)

    first = ok(realserver_init(rs, python, "dr", vip4, vip6))

    assert "changed  VIP 10.200.0.100/32 on lo" in first
    assert "changed  eth0 arp_ignore: 1" in first
    # Read back as root, with other tools.
    assert addresses(rs, "lo")[vip4] == 32
    assert addresses(rs, "lo")[vip6] == 128
    assert (conf(rs, "eth0", "arp_ignore"), conf(rs, "eth0", "arp_announce")) == ("1", "2")

    # Silent: neither ARP nor neighbour discovery answers for the VIPs.
    for vip, url in ((vip4, f"http://{vip4}:8080/"), (vip6, f"http://[{vip6}]:8080/")):
        with pytest.raises(OSError):
            http_get(client, url, timeout=8)
        neigh = json.loads(client.ip("-j", "neigh", "show", vip, "dev", "eth0"))
        assert not neigh or "lladdr" not in neigh[0], f"{vip} was resolved: {neigh}"

    # Reachable the DR way: frames for the VIP sent to the real server's MAC (the client
    # routes the VIP through the real server, as a director's MAC rewrite does).
    client.ip("route", "replace", f"{vip4}/32", "via", lan.ip4("rs"))
    client.ip("-6", "route", "replace", f"{vip6}/128", "via", lan.ip6("rs"))
    assert http_get(client, f"http://{vip4}:8080/") == server.name
    assert http_get(client, f"http://[{vip6}]:8080/") == server.name

    # Idempotent (in-process: another confined run would cost a minute under emulation).
    again = rs.call(setup, [ip_address(vip4), ip_address(vip6)], "dr")
    assert again.changed == [], str(again)

    # Control: with arp_ignore back at 0 the same probe is answered, so the silence above
    # was the setting's doing, not the probe's.
    client.ip("route", "del", f"{vip4}/32")
    client.ip("neigh", "flush", "dev", "eth0")
    rs.sysctl("net.ipv4.conf.eth0.arp_ignore", 0)
    assert http_get(client, f"http://{vip4}:8080/") == server.name


def test_dr_fails_when_conf_all_arp_ignore_defeats_it(lab: Lab):
    rs = lab.lan(["rs"])["rs"]
    rs.sysctl("net.ipv4.conf.all.arp_ignore", 3)  # answers for any non-host-scope address

    with pytest.raises(SetupError) as caught:
        rs.call(setup, [ip_address("10.200.0.100")], "dr")

    message = str(caught.value)
    assert "net.ipv4.conf.all.arp_ignore is 3" in message
    assert "eth0 still answer ARP" in message
    assert "must be 0, 1, 2 or 8" in message
    # Everything it could set, it did set.
    assert conf(rs, "eth0", "arp_ignore") == "1"


def tunnel_client(lab: Lab, vip: str) -> tuple[Netns, Netns, str]:
    """A client that sends to `vip` IP-in-IP to the real server, as a Tunnel director does."""
    lan = lab.lan(["client", "rs"])
    client, rs = lan["client"], lan["rs"]
    client.ip("link", "add", "t0", "type", "ipip", "local", lan.ip4("client"), "remote",
              lan.ip4("rs"))
    client.link_up("t0")
    client.ip("route", "add", f"{vip}/32", "dev", "t0")
    # The answer comes back directly from the VIP on eth0, not through t0.
    for scope in ("all", "eth0"):
        client.sysctl(f"net.ipv4.conf.{scope}.rp_filter", 0)
    return client, rs, lab.http_server(rs, port=8080).name


def test_tunnel_real_server(lab: Lab, python: str):
    vip = "192.0.2.100"
    client, rs, name = tunnel_client(lab, vip)

    first = ok(realserver_init(rs, python, "tunnel", vip))

    assert "VIP 192.0.2.100/32 on tunl0" in first
    info = link(rs, "tunl0")
    assert info["linkinfo"]["info_kind"] == "ipip"
    assert "UP" in info["flags"]
    assert addresses(rs, "tunl0")[vip] == 32
    for ifname in ("tunl0", "eth0"):
        assert conf(rs, ifname, "rp_filter") == "0", ifname
    assert rs.sysctl("net.ipv4.conf.all.rp_filter") == "0"
    assert (conf(rs, "eth0", "arp_ignore"), conf(rs, "eth0", "arp_announce")) == ("1", "2")

    assert http_get(client, f"http://{vip}:8080/") == name

    again = rs.call(setup, [ip_address(vip)], "tunnel")
    assert again.changed == [], str(again)
    assert "nothing changed" in str(again).splitlines()[0]


def test_tunnel_works_with_loose_conf_all_rp_filter(lab: Lab):
    vip = "192.0.2.101"
    client, rs, name = tunnel_client(lab, vip)
    rs.sysctl("net.ipv4.conf.all.rp_filter", 2)

    report = rs.call(setup, [ip_address(vip)], "tunnel")

    assert any("net.ipv4.conf.all.rp_filter is 2 (loose)" in n for n in report.notes)
    assert http_get(client, f"http://{vip}:8080/") == name


def test_tunnel_fails_when_conf_all_rp_filter_is_strict(lab: Lab):
    vip = "192.0.2.102"
    client, rs, _ = tunnel_client(lab, vip)
    rs.sysctl("net.ipv4.conf.all.rp_filter", 1)

    with pytest.raises(SetupError) as caught:
        rs.call(setup, [ip_address(vip)], "tunnel")

    message = str(caught.value)
    assert "net.ipv4.conf.all.rp_filter is 1 (strict)" in message
    assert "must be 0 or 2" in message
    # And indeed the kernel drops the tunnelled packets.
    with pytest.raises(OSError):
        http_get(client, f"http://{vip}:8080/", timeout=5)


@pytest.fixture
def no_ipip_module():
    """The node lacks ipip: unload it and make the kernel's module loader fail, then undo.

    /proc/sys/kernel/modprobe is what the kernel runs to load a module on demand (as it does
    when tunl0 is asked for); /bin/false stands in for a node without the module.
    """
    if Path("/sys/module/ipip").exists():
        subprocess.run(["modprobe", "-r", "ipip"], check=True, capture_output=True)
    path = Path("/proc/sys/kernel/modprobe")
    saved = path.read_text().strip()
    path.write_text("/bin/false\n")
    try:
        yield
    finally:
        path.write_text(saved + "\n")


def test_tunnel_without_ipip_module_says_what_to_do(lab: Lab, no_ipip_module):
    rs = lab.lan(["rs"])["rs"]

    with pytest.raises(SetupError) as caught:
        rs.call(setup, [ip_address("192.0.2.103")], "tunnel")

    message = str(caught.value)
    assert "needs the ipip kernel module" in message
    assert "run `modprobe ipip` on the node" in message
    assert "tunl0" not in rs.ip("link", "show")
