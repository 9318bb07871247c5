"""Run a command in the kernel VM with the full stack's host half around it.

Usage: ``.venv/bin/python tests/fullstack/host.py CMD [ARGS...]``, e.g.
``tests/fullstack/host.py .venv/bin/pytest tests/fullstack -v`` (what ``make test-fullstack``
runs). Starts the control plane, the CRD, the directors' Nodes and the controller on the host
(:class:`stack.HostStack`), boots the VM with qemu's user network (one NIC per director) and
the stack's ``LVS_FULLSTACK_*`` variables, runs CMD in it, and stops everything. Exits with
CMD's code.

``LVS_FULLSTACK_DIRECTORS`` (default 2: ``director-1``, ``director-2``) sets how many director
Nodes (and VM NICs) there are; each test module's site uses as many of them as it needs.

If the stack cannot start here (no Kubernetes binaries, no VM kernel, not root), it says why
and how to enable it, and exits 0 -- except under CI (``CI=true``), where it exits 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: cluster, kernel

import stack  # after the path above


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    count = os.environ.get("LVS_FULLSTACK_DIRECTORS", str(len(stack.DIRECTORS)))
    if not count.isdigit() or not 1 <= int(count) <= 9:
        print(f"LVS_FULLSTACK_DIRECTORS={count!r}: a number from 1 to 9", file=sys.stderr)
        return 2
    nodes = [f"director-{i}" for i in range(1, int(count) + 1)]
    try:
        with stack.HostStack.running("test", nodes) as host:
            rc = host.run_vm(argv)
            host.failed = rc != 0  # keep the logs
            return rc
    except stack.StackUnavailable as e:
        if stack.IN_CI:
            print(f"full-stack tier cannot start under CI: {e}\n{stack.HOW_TO_ENABLE}",
                  file=sys.stderr)
            return 1
        print(f"full-stack tier SKIPPED: {e}; {stack.HOW_TO_ENABLE}", file=sys.stderr)
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
