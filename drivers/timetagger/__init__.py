"""Time taggers: the interface in :mod:`drivers.timetagger.base`, one module per backend."""
