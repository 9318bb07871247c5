"""`lvs-operator ipvs apply` against the fake kernel: a service something else created on a
key the file asks for is named and left alone (exit status 1), unless `--adopt`."""

from __future__ import annotations

import json
from ipaddress import ip_address

import pytest

from lvs_operator import cli, syncer
from lvs_operator.ipvs import kernel
from lvs_operator.ipvs.fake import FakeIPVS
from lvs_operator.model import Forwarding, Protocol, RealServer, ServiceKey, VirtualService
from lvs_operator.network import sysctl
from lvs_operator.plan import AddReal, AddService

VIP = "192.0.2.10"
TAKEN = ServiceKey.inet(Protocol.TCP, ip_address(VIP), 80)
FREE = ServiceKey.inet(Protocol.TCP, ip_address(VIP), 443)


@pytest.fixture
def ipvs(monkeypatch):
    fake = FakeIPVS()
    # ipvsadm -A -t 192.0.2.10:80 -s wlc; ipvsadm -a -t 192.0.2.10:80 -r 10.9.9.9:80 -m -w 5
    foreign = VirtualService(TAKEN, scheduler="wlc").with_reals(
        [RealServer(ip_address("10.9.9.9"), 80, Forwarding.NAT, 5)])
    fake.apply([AddService(foreign), *(AddReal(TAKEN, r) for r in foreign.reals.values())])
    monkeypatch.setattr(kernel, "KernelIPVS", lambda: fake)
    monkeypatch.setattr(sysctl, "apply_director_sysctls", lambda wanted: [])
    return fake


def run(tmp_path, capsys, *servers, extra=()):
    path = tmp_path / "vs.json"
    path.write_text(json.dumps({"kind": "List", "items": list(servers)}))
    code = cli.main(["ipvs", "apply", "-f", str(path), "--state-file",
                     str(tmp_path / "owned.json"), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def web():
    return {"apiVersion": "lvs.dev/v1alpha1", "kind": "VirtualServer",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"vip": VIP, "ports": [{"port": 80}, {"port": 443}],
                     "scheduler": {"name": "rr"},
                     "backend": {"addresses": [{"ip": "10.0.0.1"}]}}}


def test_a_foreign_service_is_named_left_alone_and_fails_the_command(ipvs, tmp_path, capsys):
    before = ipvs.dump()[TAKEN]
    code, out, err = run(tmp_path, capsys, web())
    assert code == cli.EXIT_FAILED
    assert err == (f"lvs-operator: error: {syncer.describe_conflicts([TAKEN])}; or re-run "
                   "with --adopt to take it over as FILE describes\n")
    assert err.startswith(f"lvs-operator: error: {TAKEN} exists in this node's IPVS table "
                          "but lvs-operator did not create it")
    assert f"(ipvsadm -D -t {VIP}:80)" in err
    assert out == "applied 2 operations (1 AddReal, 1 AddService)\n"
    assert ipvs.dump()[TAKEN] == before
    assert set(ipvs.dump()) == {TAKEN, FREE}
    # A dry run says the same; the file emptied withdraws ours only.
    assert run(tmp_path, capsys, web(), extra=["--dry-run"])[0] == cli.EXIT_FAILED
    assert run(tmp_path, capsys)[:2] == (cli.EXIT_OK, "applied 1 operations (1 DeleteService)\n")
    assert ipvs.dump() == {TAKEN: before}


def test_adopt_is_the_way_to_take_it_over(ipvs, tmp_path, capsys):
    code, out, err = run(tmp_path, capsys, web(), extra=["--adopt", "--dry-run"])
    assert (code, err) == (cli.EXIT_OK, "")
    assert out.splitlines() == [
        f"set service {TAKEN} scheduler rr", f"delete real 10.9.9.9:80 from {TAKEN}",
        f"add real 10.0.0.1:80 to {TAKEN} weight 1", f"add service {FREE} scheduler rr",
        f"add real 10.0.0.1:443 to {FREE} weight 1", f"would adopt {TAKEN}",
        "would apply 5 operations (2 AddReal, 1 AddService, 1 DeleteReal, 1 SetService)"]
    assert ipvs.dump()[TAKEN].scheduler == "wlc"
    code, out, err = run(tmp_path, capsys, web(), extra=["--adopt"])
    assert (code, err) == (cli.EXIT_OK, "")
    assert out.splitlines()[0] == f"adopted {TAKEN}"
    assert ipvs.dump()[TAKEN].scheduler == "rr"
    assert {str(r) for r in ipvs.dump()[TAKEN].reals.values()} == {"10.0.0.1:80"}
    assert run(tmp_path, capsys)[0] == cli.EXIT_OK
    assert ipvs.dump() == {}
