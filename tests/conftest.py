from __future__ import annotations

import sys
from pathlib import Path

# Shared test helpers (store_contract.py, apps.py) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

# Session-wide Redis Cluster and Sentinel, started once for every module that asks.
from redis_cluster import redis_cluster, redis_sentinel  # noqa: F401
