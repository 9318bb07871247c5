"""The image `make image` built, run as the chart runs its containers (`make test-image`).

Each case is one container of charts/lvs-operator: its args after the image's entrypoint and
its securityContext (user, capabilities, read-only root filesystem). The node tier
(tests/node) runs the same image as real pods; this tier checks the image alone, in seconds.
"""

from __future__ import annotations

import os

import containers
import pytest
from containers import SecurityContext

IMAGE = os.environ.get("IMAGE", "lvs-operator:0.1.0")

# The chart's securityContexts (charts/lvs-operator/templates/{controller,agent}.yaml).
IMAGE_USER = SecurityContext(user="65532:65532")
CONTROLLER = SecurityContext(user="65532:65532")
AGENT = SecurityContext(user="0:0", capabilities=("NET_ADMIN", "NET_RAW"))

CASES = [
    pytest.param([], IMAGE_USER, "usage: lvs-operator ", id="default-cmd"),
    pytest.param(["--help"], IMAGE_USER, "usage: lvs-operator ", id="help"),
    pytest.param(["controller", "--help"], CONTROLLER, "usage: lvs-operator controller ",
                 id="controller"),
    pytest.param(["agent", "--help"], AGENT, "usage: lvs-operator agent ", id="agent"),
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
