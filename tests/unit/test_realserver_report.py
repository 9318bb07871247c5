"""How realserver-init reports what it did (the setup itself is tested in the VM)."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from lvs_operator.realserver import Check, Report, SetupError, setup

VIPS = (ip_address("192.0.2.10"), ip_address("2001:db8::10"))


def test_report_lists_changes_and_what_was_already_right():
    report = Report(
        "dr",
        VIPS,
        (
            Check("lo", "up"),
            Check("VIP 192.0.2.10/32 on lo", "present", "absent"),
            Check("eth0 arp_ignore", "1 (conf.all 0, effective 1)", "0"),
        ),
        ("a note",),
    )
    assert str(report) == "\n".join(
        [
            "DR real server for 192.0.2.10, 2001:db8::10: 2 changed, 1 already right",
            "  ok       lo: up",
            "  changed  VIP 192.0.2.10/32 on lo: present (was absent)",
            "  changed  eth0 arp_ignore: 1 (conf.all 0, effective 1) (was 0)",
            "note: a note",
        ]
    )
    assert [c.subject for c in report.changed] == ["VIP 192.0.2.10/32 on lo", "eth0 arp_ignore"]


def test_second_run_report_says_nothing_changed():
    report = Report("tunnel", VIPS[:1], (Check("tunl0", "up"), Check("tunl0 rp_filter", "0")))
    assert str(report).splitlines()[0] == (
        "Tunnel real server for 192.0.2.10: nothing changed: all 2 settings were already right"
    )
    assert report.changed == []


def test_setup_error_lists_every_problem():
    error = SetupError("tunnel", ["first thing", "second thing"])
    assert str(error) == (
        "real-server setup (tunnel) failed, 2 problems:\n  - first thing\n  - second thing"
    )


@pytest.mark.parametrize(
    ("vips", "mode", "match"),
    [([], "dr", "at least one VIP"), (list(VIPS), "nat", "mode must be one of dr, tunnel")],
)
def test_bad_arguments_are_refused_before_touching_the_kernel(vips, mode, match):
    with pytest.raises(ValueError, match=match):
        setup(vips, mode)


def test_missing_ipip_module_message(monkeypatch):
    # The kernel test unloads ipip for real; this one fakes the kernel's answer at the
    # function boundary so the message is checked on any machine.
    from lvs_operator import realserver
    from lvs_operator.network.errors import UnsupportedLinkKind

    def no_ipip(name, kind):
        raise UnsupportedLinkKind(kind, f"creating interface {name!r} (kind {kind})")

    monkeypatch.setattr(realserver, "ensure_link", no_ipip)
    with pytest.raises(SetupError) as caught:
        setup([ip_address("192.0.2.10")], "tunnel")
    message = str(caught.value)
    assert "Tunnel mode needs the ipip kernel module" in message
    assert "run `modprobe ipip` on the node" in message
    assert caught.value.report is not None and caught.value.report.checks == ()
