"""Telescope mounts: the interface in :mod:`drivers.mount.base`, one module per backend."""
