"""Run a command and end its process group when tunery dies: `python -I watchdog.py GRACE CMD...`.

Started by tunery.inference.child.spawn as the leader of a new process group, with stdin the read end of a
pipe only tunery writes to. Exits with the command's status when the command exits. When stdin reaches EOF
(tunery's process is gone, however it ended), it sends SIGTERM to the group, waits up to GRACE seconds for
the command, then SIGKILLs the group, itself included. Standard library only: it runs by path, outside the
tunery package, so that nothing but this file is imported.
"""

import os
import select
import signal
import subprocess
import sys
import time


def end_group(child: subprocess.Popen, grace: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM is for the others
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(0, signal.SIGKILL)


def main() -> int:
    grace, cmd = float(sys.argv[1]), sys.argv[2:]
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    while True:
        ready, _, _ = select.select([0], [], [], 0.5)
        if ready and not os.read(0, 4096):
            end_group(child, grace)
        code = child.poll()
        if code is not None:
            return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
