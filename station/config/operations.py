"""Unattended operation: readiness checks, fault limits. (Owned by the daemon work.)"""

from __future__ import annotations

from station.config.base import Strict


class OperationsConfig(Strict):
    """How the supervisor runs passes by itself."""
