"""A watchdog that ends a UI server whose parent died: `python -m supuq.tracking.watchdog PGID`.

`serve_ui` starts the server in a process group of its own (so it can be stopped as a whole) and this
watchdog as a child of the same parent, in a session of its own. A parent that exits normally or on a signal
stops the server itself (`stop_server`); one killed outright (SIGKILL) cannot, so the watchdog does: when it is
re-parented (its parent pid changes), it sends SIGTERM to the server's group, then SIGKILL to what is left. It
also exits, doing nothing, once the server's group is gone.
"""

from __future__ import annotations

import os
import signal
import sys
import time

POLL_S = 0.5
GRACE_S = 10.0


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a group we may not signal is not ours any more
        return False
    return True


def watch(pgid: int, parent: int) -> None:
    while group_alive(pgid):
        if os.getppid() != parent:
            for sig, wait_s in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, 0.0)):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    return
                deadline = time.monotonic() + wait_s
                while time.monotonic() < deadline and group_alive(pgid):
                    time.sleep(POLL_S / 5)
            return
        time.sleep(POLL_S)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent, which stops the server itself
    watch(int(sys.argv[1]), int(sys.argv[2]))
