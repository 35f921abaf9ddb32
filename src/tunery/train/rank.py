"""The entry point of a rank that distributed.start() launched: `python -m tunery.train.rank CONFIG.json`.

It sits above the trainer (it runs train()), so distributed.py, which the loop imports, stays below it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _die_with_parent() -> None:
    """Die with the rank 0 that started this rank (a rank left behind would wait at a collective)."""
    from tunery.settings import launched_rank

    me = launched_rank()
    parent = me.parent_pid if me else 0
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    if os.getppid() != parent:
        os._exit(3)


def main(argv: list[str] | None = None) -> None:
    """A rank started by distributed.start(): train the same run silently (rank 0 reports)."""
    from tunery.quiet import quiet_libraries

    argv = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    quiet_libraries()  # this rank's output is the user's terminal when `tunery train` started it
    config_dict = json.loads(Path(argv[0]).read_text())
    from tunery.errors import TuneryError
    from tunery.train import TrainCallbacks, TrainConfig, train

    try:
        train(TrainConfig(**config_dict), TrainCallbacks())
    except TuneryError:
        sys.exit(2)  # rank 0 meets the same problem in the same data and reports it


if __name__ == "__main__":
    main()
