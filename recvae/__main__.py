"""``python -m recvae``: the command line, as the ``recvae`` script (what torchrun runs with ``-m``)."""

import os
import sys

from recvae.cli import main

os.environ.setdefault("PYTHONUNBUFFERED", "1")
sys.exit(main())
