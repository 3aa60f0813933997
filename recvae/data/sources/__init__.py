"""Readers for raw interaction logs (the engine and the readers still share one module)."""

from recvae.data.sources.engine import *  # noqa: F403 - moved whole, split into modules next
from recvae.data.sources.engine import (  # noqa: F401 - the names other modules import
    _INT_ID,
    _clip,
    _numbers,
    _require_finite,
    _require_nonempty_ids,
    _table_format,
    _timestamps,
)
