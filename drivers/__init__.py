"""Hardware drivers: one interface module per device kind, one module per backend.

Nothing in this package imports :mod:`station`. Backends are built by name through
:mod:`drivers.registry`.
"""
