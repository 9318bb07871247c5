"""agent.settings: environment variables and flags -> Settings, errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from lvs_operator.agent import settings
from lvs_operator.model import Timeouts
from lvs_operator.network.sysctl import DirectorSysctls


def test_defaults():
    made = settings.from_env({"NODE_NAME": "n1"})
    assert made.node == "n1"
    assert made.kubeconfig is None
    assert made.state_file == Path("/var/lib/lvs-operator/owned.json")
    assert made.drain_file == Path("/var/lib/lvs-operator/owned.drains.json")
    assert made.interface is None
    assert made.metrics_address == "0.0.0.0:9640"
    assert made.sync == settings.SyncSettings()
    assert made.director.sysctls == DirectorSysctls()
    assert made.director.timeouts == Timeouts()


def test_environment_and_flags():
    env = {"NODE_NAME": "from-env", "KUBECONFIG": "/k", "LVS_STATE_FILE": "/s/o.json",
           "LVS_INTERFACE": "eth1", "LVS_METRICS_ADDRESS": "", "LVS_RESYNC_SECONDS": "10",
           "LVS_MIN_SYNC_INTERVAL_SECONDS": "0", "LVS_DRAIN_POLL_SECONDS": "0.5",
           "LVS_SYSCTL_CONNTRACK": "false", "LVS_SYSCTL_CONN_REUSE_MODE": "0",
           "LVS_TIMEOUT_TCP": "600", "LVS_TIMEOUT_UDP": "30"}
    made = settings.from_env(env, node="from-flag", interface=None, state_file="/f/x.json")
    assert made.node == "from-flag"
    assert made.interface == "eth1", "a flag left out falls back to the environment"
    assert made.state_file == Path("/f/x.json")
    assert made.drain_file == Path("/f/x.drains.json")
    assert made.kubeconfig == "/k"
    assert made.metrics_address == "", "empty serves no metrics"
    assert (made.sync.resync_seconds, made.sync.min_interval_seconds,
            made.sync.drain_poll_seconds) == (10, 0, 0.5)
    assert made.director.sysctls == DirectorSysctls(conntrack=False, conn_reuse_mode=0)
    assert made.director.timeouts == Timeouts(tcp=600, udp=30)


def test_sysctls_can_be_left_alone():
    made = settings.from_env({"NODE_NAME": "n", "LVS_MANAGE_SYSCTLS": "no"})
    assert made.director.sysctls is None


@pytest.mark.parametrize(("env", "named"), [
    ({}, "NODE_NAME"),
    ({"NODE_NAME": "n", "LVS_RESYNC_SECONDS": "soon"}, "LVS_RESYNC_SECONDS"),
    ({"NODE_NAME": "n", "LVS_RESYNC_SECONDS": "0"}, "LVS_RESYNC_SECONDS"),
    ({"NODE_NAME": "n", "LVS_TIMEOUT_TCP": "1.5"}, "LVS_TIMEOUT_TCP"),
    ({"NODE_NAME": "n", "LVS_TIMEOUT_UDP": "-1"}, "LVS_TIMEOUT_UDP"),
    ({"NODE_NAME": "n", "LVS_MANAGE_SYSCTLS": "maybe"}, "LVS_MANAGE_SYSCTLS"),
    ({"NODE_NAME": "n", "LVS_METRICS_ADDRESS": "9640"}, "LVS_METRICS_ADDRESS"),
    ({"NODE_NAME": "n", "LVS_METRICS_ADDRESS": "host:99999"}, "LVS_METRICS_ADDRESS"),
])
def test_errors_name_the_variable(env, named):
    with pytest.raises(settings.SettingsError, match=named):
        settings.from_env(env)


@pytest.mark.parametrize(("address", "split"), [
    ("0.0.0.0:9640", ("0.0.0.0", 9640)),
    (":9640", ("", 9640)),
    ("[::]:9640", ("::", 9640)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
])
def test_split_address(address, split):
    assert settings.split_address(address) == split


def test_ha_defaults_and_environment():
    ha = settings.from_env({"NODE_NAME": "n"}).ha
    assert ha == settings.HASettings()
    # keepalived by default: the Lease is membership, renewed as kubelet renews its own
    assert (ha.enabled, ha.engine, ha.keepalived, ha.namespace, ha.lease_duration_seconds,
            ha.renew_seconds, ha.settle_seconds, ha.sync_id, ha.sync_interface) == (
        True, "keepalived", True, "lvs-system", 60.0, 10.0, 5.0, 0, None)
    assert ha.vrrp == settings.VRRPSettings()
    lease = settings.from_env({"NODE_NAME": "n", "LVS_HA_ENGINE": "lease"}).ha
    assert (lease.keepalived, lease.lease_duration_seconds, lease.renew_seconds,
            lease.renew_deadline_seconds) == (False, 0.8, 0.2, 0.6)
    assert settings.from_env({"NODE_NAME": "n", "POD_NAMESPACE": "lb"}).ha.namespace == "lb"
    ha = settings.from_env({
        "NODE_NAME": "n", "POD_NAMESPACE": "lb", "LVS_NAMESPACE": "ha", "LVS_HA": "false",
        "LVS_HA_ENGINE": "lease",
        "LVS_LEASE_DURATION_SECONDS": "2", "LVS_LEASE_SETTLE_SECONDS": "1",
        "LVS_ANNOUNCE_SECONDS": "0", "LVS_SYNC_ID": "7", "LVS_SYNC_INTERFACE": "eth1"}).ha
    assert (ha.enabled, ha.namespace, ha.lease_duration_seconds, ha.renew_seconds,
            ha.renew_deadline_seconds, ha.settle_seconds, ha.announce_seconds, ha.sync_id,
            ha.sync_interface) == (False, "ha", 2.0, 0.5, 1.5, 1.0, 0.0, 7, "eth1")
    flagged = settings.from_env({"NODE_NAME": "n", "LVS_NAMESPACE": "ha"}, namespace="cli",
                                lease_duration="4", sync_interface="bond0",
                                ha_engine="lease").ha
    assert (flagged.namespace, flagged.lease_duration_seconds, flagged.renew_deadline_seconds,
            flagged.sync_interface) == ("cli", 4.0, 3.0, "bond0")


def test_vrrp_settings_from_the_environment():
    vrrp = settings.from_env({
        "NODE_NAME": "n", "LVS_VRRP_INTERFACE": "bond0", "LVS_VRRP_ADDRESS": "10.1.0.2",
        "LVS_VRRP_ADVERT_SECONDS": "0.05", "LVS_VRRP_PREEMPT_DELAY_SECONDS": "2",
        "LVS_VRRP_VRIDS": "100-199", "LVS_VRRP_GARP_REFRESH_SECONDS": "5",
        "LVS_VIP_LIFETIME_SECONDS": "3", "LVS_KEEPALIVED_DIR": "/tmp/k",
        "LVS_KEEPALIVED_BINARY": "/opt/keepalived"}).ha.vrrp
    assert vrrp == settings.VRRPSettings(
        interface="bond0", address="10.1.0.2", advert_seconds=0.05, preempt_delay_seconds=2.0,
        vrids=(100, 199), garp_refresh_seconds=5, vip_lifetime_seconds=3,
        directory=Path("/tmp/k"), binary="/opt/keepalived")
    assert settings.from_env({"NODE_NAME": "n"}, vrrp_interface="eth9",
                             keepalived_dir="/k").ha.vrrp.interface == "eth9"


@pytest.mark.parametrize(("env", "named"), [
    ({"LVS_HA_ENGINE": "raft"}, "LVS_HA_ENGINE"),
    ({"LVS_VRRP_VRIDS": "0-10"}, "LVS_VRRP_VRIDS"),
    ({"LVS_VRRP_VRIDS": "20-10"}, "LVS_VRRP_VRIDS"),
    ({"LVS_VRRP_ADVERT_SECONDS": "0.001"}, "LVS_VRRP_ADVERT_SECONDS"),
    ({"LVS_VRRP_ADDRESS": "fd00::1"}, "LVS_VRRP_ADDRESS"),
    ({"LVS_VIP_LIFETIME_SECONDS": "1.5"}, "LVS_VIP_LIFETIME_SECONDS"),
])
def test_vrrp_errors_name_the_variable(env, named):
    with pytest.raises(settings.SettingsError, match=named):
        settings.from_env({"NODE_NAME": "n", **env})


@pytest.mark.parametrize(("env", "named"), [
    ({"LVS_LEASE_RENEW_DEADLINE_SECONDS": "0.9"}, "LVS_LEASE_RENEW_DEADLINE_SECONDS"),
    ({"LVS_LEASE_RENEW_SECONDS": "0.7", "LVS_HA_ENGINE": "lease"}, "LVS_LEASE_RENEW_SECONDS"),
    ({"LVS_LEASE_DURATION_SECONDS": "x"}, "LVS_LEASE_DURATION_SECONDS"),
    ({"LVS_SYNC_ID": "256"}, "LVS_SYNC_ID"),
    ({"LVS_HA": "maybe"}, "LVS_HA"),
])
def test_ha_errors_name_the_variable(env, named):
    with pytest.raises(settings.SettingsError, match=named):
        settings.from_env({"NODE_NAME": "n", **env})
