"""qkd-station: control daemon for a satellite QKD optical ground station."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qkd-station")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
