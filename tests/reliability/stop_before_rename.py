"""Run ``recvae ARGS`` and stop (SIGSTOP) just before the Nth rename onto a file named PATTERN.

Usage: python stop_before_rename.py PATTERN N ARGS...

The process then holds its complete temporary output under a hidden ``.NAME.tmp-*`` name, the
worst moment for a ``kill -9``; the test sends it. Used by test_kill.py only.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys
from pathlib import Path

from recvae.cli import main


def _stop_before(pattern: str, nth: int) -> None:
    real_replace = os.replace
    seen = 0

    def replace(src: str | os.PathLike, dst: str | os.PathLike, **kwargs: object) -> None:
        nonlocal seen
        if fnmatch.fnmatch(Path(dst).name, pattern):
            seen += 1
            if seen == nth:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGSTOP)
        real_replace(src, dst, **kwargs)

    os.replace = replace


if __name__ == "__main__":
    _stop_before(sys.argv[1], int(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
