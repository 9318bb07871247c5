"""Director sysctls against a /proc/sys-like folder (the real one is tested in the VM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvs_operator.network.errors import SysctlError
from lvs_operator.network.sysctl import (
    DirectorSysctls,
    SysctlChange,
    apply_director_sysctls,
    ensure_sysctl,
    read_sysctl,
    sysctl_path,
)

KERNEL_DEFAULTS = {
    "net/ipv4/ip_forward": "0",
    "net/ipv4/vs/conntrack": "0",
    "net/ipv4/vs/expire_nodest_conn": "0",
    "net/ipv4/vs/expire_quiescent_template": "0",
    "net/ipv4/vs/conn_reuse_mode": "1",
}


@pytest.fixture
def proc_sys(tmp_path: Path) -> Path:
    for name, value in KERNEL_DEFAULTS.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    return tmp_path


def test_defaults_and_why():
    settings = DirectorSysctls()
    assert settings.values() == [
        ("net.ipv4.vs.conntrack", "1"),
        ("net.ipv4.vs.expire_nodest_conn", "1"),
        ("net.ipv4.vs.expire_quiescent_template", "1"),
        ("net.ipv4.vs.conn_reuse_mode", "1"),
    ]
    assert ("net.ipv4.ip_forward", "1") in DirectorSysctls(ip_forward=True).values()
    doc = DirectorSysctls.__doc__ or ""
    for issue in ("#71114", "#81775", "#71358", "#71809"):
        assert issue in doc


def test_apply_reports_only_what_changed_and_is_idempotent(proc_sys):
    changes = apply_director_sysctls(DirectorSysctls(ip_forward=True), root=proc_sys)
    assert [str(c) for c in changes] == [
        "net.ipv4.ip_forward: 0 -> 1",
        "net.ipv4.vs.conntrack: 0 -> 1",
        "net.ipv4.vs.expire_nodest_conn: 0 -> 1",
        "net.ipv4.vs.expire_quiescent_template: 0 -> 1",
    ]
    assert read_sysctl("net.ipv4.vs.conntrack", root=proc_sys) == "1"
    assert apply_director_sysctls(DirectorSysctls(ip_forward=True), root=proc_sys) == []


def test_ip_forward_is_left_alone_by_default(proc_sys):
    apply_director_sysctls(DirectorSysctls(), root=proc_sys)
    assert read_sysctl("net.ipv4.ip_forward", root=proc_sys) == "0"


def test_missing_ip_vs_is_a_clear_error(tmp_path):
    (tmp_path / "net/ipv4").mkdir(parents=True)
    with pytest.raises(SysctlError, match=r"ip_vs kernel module is not loaded.*modprobe ip_vs"):
        apply_director_sysctls(DirectorSysctls(), root=tmp_path)


def test_value_that_does_not_read_back_is_an_error(tmp_path):
    # A file that ignores writes stands in for a kernel that clamps or refuses a value.
    path = tmp_path / "net/ipv4/vs/conn_reuse_mode"
    path.parent.mkdir(parents=True)
    path.symlink_to("/dev/null")
    message = r"net.ipv4.vs.conn_reuse_mode: wrote '1' but it reads back as ''"
    with pytest.raises(SysctlError, match=message):
        ensure_sysctl("net.ipv4.vs.conn_reuse_mode", "1", root=tmp_path)


def test_unchanged_is_reported_as_such():
    assert str(SysctlChange("net.ipv4.vs.conntrack", "1", "1")) == (
        "net.ipv4.vs.conntrack = 1 (unchanged)"
    )


def test_sysctl_path_accepts_slashes_for_names_with_dots():
    assert sysctl_path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    name = "net/ipv4/conf/eth0.100/rp_filter"
    assert sysctl_path(name) == f"/proc/sys/{name}"
    assert sysctl_path("a.b", root=Path("/x")) == "/x/a/b"


def test_missing_sysctl_names_the_path(tmp_path):
    with pytest.raises(SysctlError, match=r"net.ipv4.nope: .*net/ipv4/nope does not exist"):
        read_sysctl("net.ipv4.nope", root=tmp_path)
