"""The QKD post-processing core and key delivery.

Turns a pass's detection events (the documented stream, or a pass file) into secret key
shared with the satellite over an authenticated classical channel, keeps the keys, and
delivers them to applications by ETSI GS QKD 014. It imports neither ``station.daemon``
nor driver internals: its inputs are the stream protocol, pass files and the channel.
"""
