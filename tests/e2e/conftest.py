from __future__ import annotations

import sys
from pathlib import Path

# The shared Redis fixtures, and this folder's helpers (load.py, jobs_app.py).
from redis_server import redis_process, redis_url  # noqa: F401

sys.path.insert(0, str(Path(__file__).parent))
