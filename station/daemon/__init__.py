"""The daemon: lifecycle (:mod:`.app`), supervisor and modes (:mod:`.supervisor`), the
per-pass state machine (:mod:`.pass_runner`), readiness checks, alarms and the state file."""
