"""The pass schedule: which passes the station takes, and a reason for every other one.

Entry point: :func:`plan` (synchronous; the daemon runs it in a worker thread).
"""

from station.schedule.planner import PlannedPass, Schedule, parse_pass_id, plan

__all__ = ["PlannedPass", "Schedule", "parse_pass_id", "plan"]
