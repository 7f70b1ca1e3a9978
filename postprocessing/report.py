"""The key report of one pass: numbers only, never a key bit.

Written as JSON (``keys distill --report``), printed by ``qkd-station rehearse`` beside
the paper's figures, and published on MQTT, retained, at
``<topic_root>/<station_id>/passes/<pass_id>/key`` (docs/postprocessing.md) by
:func:`publish_report` — a small aiomqtt publisher of its own, not the daemon's.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, computed_field

BASES = ("Z", "X")
CLASSES = ("signal", "decoy", "vacuum")

# Liao et al., Nature 549, 43 (2017): the Micius pass of 2016-12-19 over Xinglong.
PAPER_MICIUS = {"detections": 3_551_136, "sifted_bits": 1_671_072, "qber": 0.011,
                "final_bits": 300_939, "epsilon": 1e-9}


class EcFigures(BaseModel):
    sessions: int = 0
    blocks: int = 0
    failed_blocks: int = 0
    round_trips: int = 0
    kept_bits: int = 0
    leaked_bits: int = Field(0, description="λ_EC: every bit error correction disclosed (satellite's count).")
    disclosed_bits: int = 0
    efficiency_f: float | None = Field(None, description="λ_EC / (kept · h(QBER)).")


class BasisBounds(BaseModel):
    key_basis: str
    s0_lower: float = Field(description="Vacuum events of the key basis, lower bound.")
    s1_lower: float = Field(description="Single-photon events of the key basis, lower bound.")
    single_photon_yield_lower: float | None = Field(
        None, description="s1 / n_key: fraction of the key basis's bits from single photons.")
    phase_error_upper: float = Field(description="φ: single-photon phase-error rate, upper bound.")
    entropy_bits: float


class KeyReport(BaseModel):
    """One pass's figures at the ground station."""

    format: Literal["qkd-station-key-report"] = "qkd-station-key-report"
    version: int = 1
    pass_id: str
    station: str
    satellite: str
    outcome: Literal["stored", "empty", "aborted"]
    reason: str = ""
    detections: int = 0
    gated_detections: int = 0
    multi_clicks: int = 0
    announced: int = 0
    sifted_bits: int = 0
    sifted: dict[str, dict[str, int]] = Field(default_factory=dict, description="Sifted bits per basis and class.")
    kept: dict[str, dict[str, int]] = Field(default_factory=dict, description="Reconciled (kept) bits per basis and class.")
    errors: dict[str, dict[str, int]] = Field(default_factory=dict)
    qber: dict[str, dict[str, float | None]] = Field(default_factory=dict, description="QBER per basis and class.")
    qber_overall: float | None = None
    ec: EcFigures = EcFigures()
    decoy: list[BasisBounds] | None = None
    key_length_bits: int | None = None
    verification_passed: bool | None = None
    verification_tag_bits: int | None = None
    final_bits: int = 0
    replenished_auth_bits: int = Field(0, description="Final-key bits returned to the authentication pool.")
    stored_bits: int = 0
    key_blocks: int = 0
    auth_messages: int = 0
    epsilon_sec: float
    epsilon_cor: float
    duration_s: float = 0.0
    end_of_stream_to_key_s: float | None = None

    @computed_field(description="Sifted bits that did not become reconciled key: a tiny last EC "
                                "session's bits dropped at both ends, failed blocks; on an aborted "
                                "pass also the bits never reconciled. sifted_bits − ec.kept_bits.")
    def discarded_bits(self) -> int:
        return max(0, self.sifted_bits - self.ec.kept_bits)

    def signal_qber(self) -> float | None:
        """QBER of the signal class over both bases: the figure Liao et al. quote (1.1 %).
        The overall QBER also counts the decoy and the vacuum class (~50 %: noise), so it is
        no comparison; without per-class tables (an old report) it is what is left."""
        kept = sum(self.kept.get(b, {}).get("signal", 0) for b in BASES)
        if not kept:
            return self.qber_overall
        return sum(self.errors.get(b, {}).get("signal", 0) for b in BASES) / kept

    def versus_paper(self, paper: dict[str, float] = PAPER_MICIUS) -> list[tuple[str, float, float, float]]:
        """(quantity, ours, paper, ratio) for the figures the paper reports."""
        rows = [("detections", float(self.detections), paper["detections"]),
                ("sifted bits", float(self.sifted_bits), paper["sifted_bits"]),
                ("QBER (signal class)", float(self.signal_qber() or 0.0), paper["qber"]),
                ("final key bits", float(self.final_bits), paper["final_bits"])]
        return [(n, a, b, a / b if b else float("nan")) for n, a, b in rows]

    def summary(self, paper: dict[str, float] | None = None) -> str:
        lines = [f"key {self.pass_id} ({self.station} ↔ {self.satellite}): {self.outcome}"
                 + (f" — {self.reason}" if self.reason else "")]
        lines.append(f"  detections {self.detections:,} ({self.gated_detections:,} in the gate), "
                     f"sifted {self.sifted_bits:,}, kept after EC {self.ec.kept_bits:,}"
                     + (f" ({self.discarded_bits:,} discarded)" if self.discarded_bits else ""))
        for b in BASES:
            q = self.qber.get(b, {})
            lines.append(f"  {b}: sifted " + ", ".join(f"{k} {self.sifted.get(b, {}).get(k, 0):,}" for k in CLASSES)
                         + "; QBER " + ", ".join(f"{k} {_pct(q.get(k))}" for k in CLASSES))
        f = f"{self.ec.efficiency_f:.3f}" if self.ec.efficiency_f is not None else "n/a"
        lines.append(f"  EC: λ_EC {self.ec.leaked_bits:,} bits, f {f}, {self.ec.sessions} sessions, "
                     f"{self.ec.blocks} blocks ({self.ec.failed_blocks} failed), {self.ec.round_trips} round trips")
        for d in self.decoy or []:
            lines.append(f"  decoy ({d.key_basis} key): s0 ≥ {d.s0_lower:,.0f}, s1 ≥ {d.s1_lower:,.0f}, "
                         f"phase error ≤ {100 * d.phase_error_upper:.2f} %")
        if self.verification_passed is not None:
            lines.append(f"  verification: {'passed' if self.verification_passed else 'FAILED'} "
                         f"({self.verification_tag_bits}-bit tag)")
        lines.append(f"  final key {self.final_bits:,} bits (ε_sec {self.epsilon_sec:g}, ε_cor {self.epsilon_cor:g}); "
                     f"{self.replenished_auth_bits:,} back to the auth pool, {self.stored_bits:,} stored "
                     f"in {self.key_blocks} blocks")
        t = f", end of stream → key {self.end_of_stream_to_key_s:.2f} s" if self.end_of_stream_to_key_s is not None else ""
        lines.append(f"  time {self.duration_s:.1f} s{t}")
        if paper is not None:
            lines.append("  versus Liao et al. 2017:      ours        paper    ratio")
            for name, ours, theirs, ratio in self.versus_paper(paper):
                fmt = (lambda v: f"{100 * v:.2f} %") if name.startswith("QBER") else (lambda v: f"{v:,.0f}")
                lines.append(f"    {name:<22} {fmt(ours):>12} {fmt(theirs):>12} {ratio:8.3f}")
        return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"


def basis_class_table(table: list[list[int]], denominators: list[list[int]] | None = None) -> dict[str, Any]:
    """``[[Z classes], [X classes]]`` as ``{"Z": {"signal": …}, "X": {…}}`` (ratios with
    ``denominators``; None where the denominator is 0)."""
    out: dict[str, Any] = {}
    for b, name in enumerate(BASES):
        if denominators is None:
            out[name] = {k: int(table[b][i]) for i, k in enumerate(CLASSES)}
        else:
            out[name] = {k: (table[b][i] / denominators[b][i] if denominators[b][i] else None)
                         for i, k in enumerate(CLASSES)}
    return out


def decoy_figures(estimate: Any) -> list[BasisBounds]:
    """The decoy bounds of a :class:`~postprocessing.estimation.KeyLengthResult`."""
    return [BasisBounds(key_basis=b.key_basis, s0_lower=b.s0_lower, s1_lower=b.s1_lower,
                        single_photon_yield_lower=b.s1_lower / b.n_key_bits if b.n_key_bits else None,
                        phase_error_upper=b.phase_error_upper, entropy_bits=b.entropy_bits)
            for b in estimate.per_basis]


def report_topic(topic_root: str, station_id: str, pass_id: str) -> str:
    return f"{topic_root}/{station_id}/passes/{pass_id}/key"


async def publish_report(report: KeyReport, *, host: str, port: int, topic_root: str = "qkd",
                         station_id: str | None = None, username: str | None = None,
                         password: str | None = None) -> str:
    """Publish the report (retained, QoS 1) under the pass's topics; returns the topic."""
    import aiomqtt

    topic = report_topic(topic_root, station_id or report.station, report.pass_id)
    async with aiomqtt.Client(host, port, username=username, password=password,
                              identifier=f"qkd-keys-{report.station}") as client:
        await client.publish(topic, report.model_dump_json(), qos=1, retain=True)
    return topic


__all__ = ["PAPER_MICIUS", "BasisBounds", "EcFigures", "KeyReport", "basis_class_table",
           "decoy_figures", "publish_report", "report_topic"]
