"""flit-cache's Python client.

    from flit_cache import FlitClient
    client = FlitClient.from_env()          # REDIS_URL, FLIT_SPOOL_DIR, ...
    client.send_prediction({"prediction_id": "p1", ...})   # "streamed" or "spooled"
    client.get_prediction("p1")             # the record, or None

`AsyncFlitClient` (in `flit_cache.aio`) has the same calls for asyncio.
Events are checked with the door's rules before they leave (`door.Rejected`
for an event that could never become a row); a send never waits on Redis
longer than its bound and spools when Redis fails; lookups return None
when Redis does not answer in time.
"""

from . import door
from ._common import (
    PREDICTIONS,
    TRANSACTIONS,
    CorruptRecord,
    Delivery,
    Health,
    LookupStats,
    ReplayReport,
    Settings,
)
from .aio import AsyncFlitClient
from .client import FlitClient, RedisUnavailable
from .door import Rejected
from .spool import SpoolError, SpoolFull

__all__ = [
    "AsyncFlitClient",
    "CorruptRecord",
    "Delivery",
    "FlitClient",
    "Health",
    "LookupStats",
    "PREDICTIONS",
    "Rejected",
    "RedisUnavailable",
    "ReplayReport",
    "Settings",
    "SpoolError",
    "SpoolFull",
    "TRANSACTIONS",
    "door",
]
