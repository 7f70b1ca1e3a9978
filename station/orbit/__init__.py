"""Orbital elements and pass prediction: the catalog of element sets, look angles of
satellites, the Sun and the Moon from the station, and the passes above its horizon."""
