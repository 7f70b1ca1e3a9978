"""Errors of the reconciliation stage. Messages name the thing and the reason, never a
key bit."""

from __future__ import annotations


class ReconciliationError(Exception):
    """Reconciliation could not proceed (bad input, inconsistent peer)."""


class ReconciliationRefused(ReconciliationError):
    """Alice refused a request (out of range, replayed, unknown or mismatched code)."""
