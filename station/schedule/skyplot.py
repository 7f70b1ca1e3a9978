"""A polar sky plot of a schedule: the picture an operator pins on the wall.

North up, east to the right (as the sky is seen from below, looking up: azimuth runs
clockwise), zenith in the centre, horizon at the rim. The horizon mask is shaded; each
scheduled pass is drawn from AOS (triangle) to LOS, its QKD window thicker; the Sun and
the Moon are marked where they stand at each pass's culmination (when above the horizon).

Needs matplotlib, the optional ``plot`` extra: ``pip install 'qkd-station[plot]'``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from station.orbit.geometry import look_angles, moon_altaz, sun_altaz

if TYPE_CHECKING:
    from station.config.site import SiteConfig
    from station.schedule.planner import PlannedPass, Schedule


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(
            "the sky plot needs matplotlib: install the plot extra, pip install 'qkd-station[plot]'"
        ) from None
    return plt


def render_sky_plot(
    schedule: Schedule, site: SiteConfig, path: Path, *, show_rejected: bool = True
) -> Path:
    """Draw ``schedule`` over ``site``'s sky into ``path`` (PNG, or any matplotlib format)."""
    plt = _pyplot()
    fig = plt.figure(figsize=(8.5, 9.0), dpi=120)
    ax = fig.add_subplot(projection="polar")
    _draw_sky(ax, site)
    colours = plt.get_cmap("tab10")
    scheduled = schedule.scheduled()
    if show_rejected:
        _draw_rejected(ax, schedule, site)
    sun_label = moon_label = False
    for i, p in enumerate(scheduled):
        colour = colours(i % 10)
        _draw_pass(ax, p, site, colour)
        sun, moon = _draw_sun_and_moon(ax, p, site)
        sun_label, moon_label = sun_label or sun, moon_label or moon
    _legend_and_title(ax, schedule, len(scheduled), sun_label, moon_label)
    path = Path(path)
    fig.savefig(path, bbox_inches="tight", pad_inches=0.3)
    plt.close(fig)
    return path


def _draw_sky(ax: Any, site: SiteConfig) -> None:
    """The polar frame (north up, azimuth clockwise, zenith in the centre) and the mask."""
    ax.set_theta_zero_location("N")
    ax.set_theta_direction(-1)
    ax.set_rlim(0, 90)
    ax.set_rticks([0, 15, 30, 45, 60, 75, 90])
    ax.set_yticklabels(["90°", "75°", "60°", "45°", "30°", "15°", ""], fontsize=8, color="0.35")
    ax.set_rlabel_position(202)
    ax.set_xticks(np.radians(np.arange(0, 360, 45)))
    ax.set_xticklabels(["N", "NE", "E", "SE", "S", "SW", "W", "NW"])
    ax.grid(color="0.8", linewidth=0.6)

    az = np.linspace(0, 360, 721)
    mask = site.horizon_min_el_deg(az)
    theta = np.radians(az)
    ax.fill_between(theta, 90 - mask, 90, color="0.55", alpha=0.45, linewidth=0, label="horizon mask")
    ax.plot(theta, 90 - mask, color="0.35", linewidth=1.0)


def _draw_rejected(ax: Any, schedule: Schedule, site: SiteConfig) -> None:
    for p in schedule.rejected():
        t = np.linspace(p.aos_s, p.los_s, 120)
        la = look_angles(p.earth_satellite(), site, t)
        ax.plot(np.radians(la.az_deg), 90 - la.el_deg, color="0.6", linewidth=0.8, linestyle=":")
    if schedule.rejected():
        ax.plot([], [], color="0.6", linewidth=0.8, linestyle=":", label="rejected passes")


def _draw_pass(ax: Any, p: PlannedPass, site: SiteConfig, colour: Any) -> None:
    """One scheduled pass: its track, its QKD window thicker, AOS (triangle), LOS (square)."""
    t = np.arange(p.aos_s, p.los_s, 2.0)
    la = look_angles(p.earth_satellite(), site, np.append(t, p.los_s))
    label = f"{p.satellite}  {p.aos:%m-%d %H:%M:%S}–{p.los:%H:%M:%S}Z  max {p.max_el_deg:.0f}°"
    ax.plot(np.radians(la.az_deg), 90 - la.el_deg, color=colour, linewidth=1.4, label=label)
    if p.qkd_start is not None and p.qkd_end is not None:
        q = (la.time_s >= p.qkd_start.timestamp()) & (la.time_s <= p.qkd_end.timestamp())
        ax.plot(np.radians(la.az_deg[q]), 90 - la.el_deg[q], color=colour, linewidth=4.0, alpha=0.8)
    ax.plot(np.radians(la.az_deg[0]), 90 - la.el_deg[0], marker="^", color=colour, markersize=8)
    ax.annotate(
        f"{p.aos:%H:%M}", (np.radians(la.az_deg[0]), 90 - la.el_deg[0]),
        textcoords="offset points", xytext=(6, 4), fontsize=8, color=colour,
    )
    ax.plot(np.radians(la.az_deg[-1]), 90 - la.el_deg[-1], marker="s", color=colour, markersize=5)


def _draw_sun_and_moon(ax: Any, p: PlannedPass, site: SiteConfig) -> tuple[bool, bool]:
    """The Sun and the Moon at the pass's culmination; whether each was above the horizon."""
    sun_up = moon_up = False
    sun_az, sun_el = sun_altaz(site, np.array([p.tca_s]))
    if sun_el[0] > 0:
        ax.plot(np.radians(sun_az[0]), 90 - sun_el[0], marker="o", markersize=14, color="gold",
                markeredgecolor="darkorange")
        sun_up = True
    moon_az, moon_el = moon_altaz(site, np.array([p.tca_s]))
    if moon_el[0] > 0:
        ax.plot(np.radians(moon_az[0]), 90 - moon_el[0], marker="o", markersize=11, color="0.9",
                markeredgecolor="0.3")
        ax.annotate(
            f"{p.tca:%H:%M}", (np.radians(moon_az[0]), 90 - moon_el[0]),
            textcoords="offset points", xytext=(7, -10), fontsize=7, color="0.3",
        )
        moon_up = True
    return sun_up, moon_up


def _legend_and_title(ax: Any, schedule: Schedule, n_scheduled: int, sun_label: bool,
                      moon_label: bool) -> None:
    if sun_label:
        ax.plot([], [], marker="o", markersize=10, color="gold", markeredgecolor="darkorange",
                linestyle="none", label="Sun at culmination (time UTC)")
    if moon_label:
        ax.plot([], [], marker="o", markersize=9, color="0.9", markeredgecolor="0.3",
                linestyle="none", label="Moon at culmination (time UTC)")
    ax.plot([], [], color="0.3", linewidth=4.0, alpha=0.6, label="QKD window (thick)")
    ax.plot([], [], marker="^", color="0.3", linestyle="none", label="AOS (time UTC)")
    notes = []
    if not sun_label:
        notes.append("Sun below the horizon at every culmination")
    if not moon_label:
        notes.append("Moon below the horizon at every culmination")
    title = (
        f"{schedule.site}\n{schedule.start:%Y-%m-%d %H:%M}Z – {schedule.end:%Y-%m-%d %H:%M}Z: "
        f"{n_scheduled} scheduled, {len(schedule.rejected())} rejected"
    )
    if notes:
        title += "\n" + "; ".join(notes)
    ax.set_title(title, fontsize=11, pad=24)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), fontsize=8, ncol=1, frameon=False)
