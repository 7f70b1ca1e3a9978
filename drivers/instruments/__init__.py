"""Auxiliary instruments over VISA: the beacon laser and the time reference (GPSDO).

Each backend class serves both registry names: ``visa`` (a real instrument at
``resource_name``) and ``sim`` (the pyvisa-sim YAML devices shipped in this package,
opened with ``<file>.yaml@sim``). See docs/instruments.md.
"""
