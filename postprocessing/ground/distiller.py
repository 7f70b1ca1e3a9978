"""Bob's pipeline for one pass: batches → pulses → sifting → EC → estimation →
verification → PA → key store, talking to the satellite over the classical channel.

Batches are fed in stream order (:meth:`PassDistiller.feed`), live from the stream or from
a pass file; every ``chunk_batches`` batches the chunk is sifted with the satellite, and
every ``ec_segment_bits`` sifted bits are reconciled, so both keep pace with the pass.
At the end (:meth:`PassDistiller.finish`) the rest is sifted and reconciled, the key
length estimated over the whole pass, the key verified, hashed and stored.

State is checkpointed durably after every chunk and every EC session
(:class:`Checkpoint`, in ``work_dir/<pass_id>/``, 0700/0600): a distiller restarted
mid-pass resumes at the first batch not yet sifted, and the satellite's idempotent
answers make it end with the same key. The checkpoint holds Bob's raw and corrected
bits, so it is wiped when the pass ends, stored or aborted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from postprocessing.amplification import toeplitz_hash
from postprocessing.auth import AuthenticationError, Direction, KeyPoolError, Transcript
from postprocessing.bits import pack_bits, unpack_bits
from postprocessing.channel.framing import ChannelError, dump_model, lower_bytes
from postprocessing.channel.link import PeerRefused, SatelliteLink
from postprocessing.channel.messages import (
    Abort,
    BasisCountsMsg,
    Confirm,
    ConfirmReply,
    Counters,
    EcOp,
    EcReply,
    Finalize,
    FinalizeReply,
    Hello,
    HelloReply,
    Sift,
    SiftReply,
    VacuumDiscloseReply,
    VacuumDiscloseRequest,
)
from postprocessing.estimation import SecurityParameters, SiftedCounts, secret_key_length
from postprocessing.keystore import KeyStore, derive_key_ids
from postprocessing.pulses import (
    Detectors,
    PassTiming,
    PulseMapper,
    PulseMapperState,
    tagger_epoch_utc_ps_of,
)
from postprocessing.reconciliation import (
    FinishReply,
    FinishRequest,
    ReconciliationError,
    ReconciliationResult,
    RevealReply,
    RevealRequest,
    SyndromeReply,
    SyndromeRequest,
    reconcile,
)
from postprocessing.reconciliation.cascade import (
    CascadeConfig,
    CascadeFinishReply,
    CascadeFinishRequest,
    CascadeSetupReply,
    CascadeSetupRequest,
    ParityReply,
    ParityRequest,
    cascade_reconcile,
)
from postprocessing.report import EcFigures, KeyReport, basis_class_table, decoy_figures
from postprocessing.sifting import AliceAnnouncement, BobAnnouncement, SiftTally, sift_mask
from postprocessing.verification import VerificationSeed, tags_match, verification_tag

log = logging.getLogger(__name__)


class GroundSettings(BaseModel):
    """What Bob's pipeline needs (the station config's ``[keys]`` section maps onto it)."""

    station: str = Field(description="This station's name on the classical channel.")
    satellite: str = Field("micius-sim", description="The satellite's name: the key store's peer.")
    satellite_endpoint: str = "tcp://127.0.0.1:5570"
    auth_pool: Path
    keystore_dir: Path
    work_dir: Path
    gate_ps: float = Field(1000.0, gt=0, description="Detections within ±gate of a pulse count "
                                                     "(the 2 ns window of Liao et al. 2017).")
    chunk_batches: int = Field(50, ge=1, description="Batches per sifting round (50 × 0.1 s).")
    ec_method: Literal["ldpc", "cascade"] = Field(
        "cascade", description="Error correction: Cascade (f ≈ 1.1, ~130 round trips per session) "
                               "or LDPC syndromes (f ≈ 1.5, a few round trips).")
    ec_segment_bits: int = Field(100_000, ge=10_000, description="Sifted bits per LDPC EC session (~3 LDPC blocks).")
    cascade_segment_bits: int = Field(1_000_000, ge=10_000, description="Sifted bits per Cascade EC "
                                      "session (long: each costs ~100–130 round trips whatever its length; "
                                      "its messages are authenticated once, by the session's "
                                      "closing exchange over its transcript: 256 pool bits a session).")
    qber_prior: float = Field(0.03, gt=0, lt=0.25,
                              description="QBER assumed when no background estimate is at hand.")
    rep_rate_hz: float = 100e6
    sync_rate_hz: float = 10e3
    timeout_s: float = Field(60.0, gt=0)
    security: SecurityParameters = SecurityParameters()


class PassAborted(RuntimeError):
    """The pass's key was discarded; ``report`` says why (nothing of it was stored)."""

    def __init__(self, reason: str, report: KeyReport) -> None:
        super().__init__(reason)
        self.report = report


class _Progress(BaseModel):
    next_seq: int = 0
    chunks: int = 0
    tagger_epoch_utc_ps: int | None = None
    mapper: PulseMapperState = PulseMapperState()
    announced: int = 0
    sifted_bits: int = 0
    ec_sessions: int = 0
    reconciled_bits: int = 0
    kept_bits: int = 0
    leaked_bits: int = 0
    disclosed_bits: int = 0
    ec_blocks: int = 0
    ec_failed_blocks: int = 0
    ec_round_trips: int = 0
    errors: int = 0
    last_qber: float | None = None  # the previous session's measured QBER
    # Noise model of the QBER (see _error_priors): per chunk (sifted end, noise fraction).
    chunk_noise: list[tuple[int, float]] = Field(default_factory=list)
    noise_marks: tuple[int, int] = (0, 0)  # mapper's (detections, gated) at the last chunk
    e_opt: float | None = None  # calibrated error rate of the signal itself
    tally: SiftTally = SiftTally()  # kept bits and their errors, per basis and class
    sifted_tally: SiftTally = SiftTally()  # every sifted bit, per basis and class
    started_s: float = 0.0
    requests: int = 0


class Checkpoint:
    """Bob's durable per-pass state: ``progress.json`` plus one file per chunk and per EC
    session (numpy ``.npy`` in a 0700 directory, files 0600, each written whole and
    renamed into place, then the progress that names it)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)

    def load(self) -> _Progress | None:
        path = self.dir / "progress.json"
        if not path.exists():
            return None
        return _Progress.model_validate_json(path.read_text())

    def save(self, progress: _Progress) -> None:
        self._write(self.dir / "progress.json", progress.model_dump_json().encode())

    def save_array(self, name: str, arr: np.ndarray) -> None:
        import io

        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        self._write(self.dir / f"{name}.npy", buf.getvalue())

    def load_array(self, name: str) -> np.ndarray:
        return np.load(self.dir / f"{name}.npy", allow_pickle=False)

    def _write(self, path: Path, data: bytes) -> None:
        from station.files import write_durably

        write_durably(path, data, 0o600)  # Bob's raw and corrected bits: key material

    def wipe(self) -> None:
        """Remove the pass's state (raw and corrected bits included)."""
        shutil.rmtree(self.dir, ignore_errors=True)


class _EcChannel:
    """The reconciliation stage's :class:`ReconciliationChannel` over the satellite link."""

    def __init__(self, link: SatelliteLink, pass_id: str, session: int, offset: int, length: int) -> None:
        self.link, self.pass_id = link, pass_id
        self.session, self.offset, self.length = session, offset, length
        self.transcript: Transcript | None = None

    async def _ask(self, op: str, request: Any, reply_type: type, *, untagged: bool = False) -> Any:
        body, frames = dump_model(request)
        reply = await self.link.request(self.pass_id, EcOp(session=self.session, offset_bits=self.offset,
                                                           length_bits=self.length, op=op, request=body),
                                        extra_frames=frames, transcript=self.transcript, untagged=untagged)
        assert isinstance(reply.body, EcReply)
        if reply.body.session != self.session or reply.body.op != op:
            raise ChannelError(f"EC {op} of session {self.session} answered for session "
                               f"{reply.body.session} {reply.body.op}")
        return reply_type.model_validate(lower_bytes(reply.body.reply, reply.message.extra_frames))

    async def syndromes(self, request: SyndromeRequest) -> SyndromeReply:
        return await self._ask("syndromes", request, SyndromeReply)

    async def reveal(self, request: RevealRequest) -> RevealReply:
        return await self._ask("reveal", request, RevealReply)

    async def finish(self, request: FinishRequest) -> FinishReply:
        return await self._ask("finish", request, FinishReply)


class _CascadeEcChannel(_EcChannel):
    """Cascade's :class:`~postprocessing.reconciliation.cascade.CascadeChannel` over the link
    (its ``finish`` is Cascade's, so it is a class of its own).

    Delayed authentication: the session's vacuum, setup and parity messages travel
    untagged into the session's :class:`~postprocessing.auth.Transcript`; ``finish`` and its
    reply are tagged over the whole transcript, so nothing of the session is believed
    until they check out (a mismatch raises AuthenticationError or PeerRefused)."""

    def __init__(self, link: SatelliteLink, pass_id: str, session: int, offset: int, length: int) -> None:
        super().__init__(link, pass_id, session, offset, length)
        self.transcript = Transcript(link.pool, f"{pass_id}/{session}")

    async def vacuum(self, request: VacuumDiscloseRequest) -> VacuumDiscloseReply:
        return await self._ask("cascade_vacuum", request, VacuumDiscloseReply, untagged=True)

    async def setup(self, request: CascadeSetupRequest) -> CascadeSetupReply:
        return await self._ask("cascade_setup", request, CascadeSetupReply, untagged=True)

    async def parities(self, request: ParityRequest) -> ParityReply:
        return await self._ask("cascade_parities", request, ParityReply, untagged=True)

    async def finish(self, request: CascadeFinishRequest) -> CascadeFinishReply:  # type: ignore[override]
        return await self._ask("cascade_finish", request, CascadeFinishReply)


class PassDistiller:
    """One pass at the ground. ``await open()``, ``feed()`` every batch from
    :attr:`next_seq` on, ``await finish()`` → :class:`KeyReport` (or :class:`PassAborted`)."""

    def __init__(self, settings: GroundSettings, link: SatelliteLink, keystore: KeyStore,
                 pass_id: str, header: dict[str, str]) -> None:
        self.s = settings
        self.link = link
        self.keystore = keystore
        self.pass_id = pass_id
        self.header = header
        self.timing = PassTiming.from_header(header, rep_rate_hz=settings.rep_rate_hz,
                                             sync_rate_hz=settings.sync_rate_hz)
        self.detectors = Detectors.from_channel_map(header.get("channel_map", "{}"))
        self.ckpt = Checkpoint(settings.work_dir / pass_id)
        self.p = _Progress(started_s=time.time())
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_first = 0
        self._sifted: list[np.ndarray] = []  # per chunk: structured (pulse, basis, class, bit)
        self._kept: list[np.ndarray] = []  # per EC session: corrected kept bits
        self._mapper: PulseMapper | None = None
        self.state = "new"

    @property
    def next_seq(self) -> int:
        """The stream seq the distiller needs next."""
        return self._pending_first + len(self._pending)

    # -- open / resume -------------------------------------------------------------------
    async def open(self) -> HelloReply:
        loaded = await asyncio.to_thread(self.ckpt.load)
        if loaded is not None:
            self.p = loaded
            self._sifted = [await asyncio.to_thread(self.ckpt.load_array, f"chunk-{i:06d}")
                            for i in range(self.p.chunks)]
            self._kept = [await asyncio.to_thread(self.ckpt.load_array, f"ec-{i:04d}")
                          for i in range(self.p.ec_sessions)]
            log.info("pass %s: resuming at batch %d (%d chunks sifted, %d EC sessions)",
                     self.pass_id, self.p.next_seq, self.p.chunks, self.p.ec_sessions)
        self._pending_first = self.p.next_seq
        if self.p.tagger_epoch_utc_ps is not None:
            self.timing.tagger_epoch_utc_ps = self.p.tagger_epoch_utc_ps
            self._make_mapper()
        pool = self.link.pool
        hello = Hello(rep_rate_hz=self.s.rep_rate_hz, sync_rate_hz=self.s.sync_rate_hz,
                      counters=Counters(ground_to_satellite=pool.next_counter(Direction.GROUND_TO_SATELLITE),
                                        satellite_to_ground=pool.next_counter(Direction.SATELLITE_TO_GROUND)))
        reply = (await self._request(hello)).body
        assert isinstance(reply, HelloReply)
        if reply.state == "aborted":
            await self._abort(f"the satellite aborted the pass: {reply.reason}", notify=False)
        if reply.state in ("finalized", "stored") or reply.chunks_answered < self.p.chunks:
            await self._abort(f"the satellite's session ({reply.state}, {reply.chunks_answered} "
                              f"chunks) does not match ours ({self.p.chunks} chunks)")
        self.state = "open"
        return reply

    def _make_mapper(self) -> None:
        self._mapper = PulseMapper(detectors=self.detectors, period_ps=self.timing.period_ps,
                                   pulses_per_sync=self.timing.pulses_per_sync,
                                   anchor=self.timing.anchor, gate_ps=self.s.gate_ps,
                                   state=self.p.mapper)

    # -- feeding -------------------------------------------------------------------------
    async def feed(self, seq: int, timestamps_ps: np.ndarray, channels: np.ndarray,
                   metadata: dict[str, str]) -> None:
        """Batch ``seq`` (must be :attr:`next_seq`) with its metadata (``start_ps``,
        ``start_time_s`` as in docs/passfile.md)."""
        if seq != self.next_seq:
            raise ValueError(f"pass {self.pass_id}: batch {seq} fed, expected {self.next_seq}")
        if self._mapper is None:
            start_time = metadata.get("start_time_s")
            if start_time in (None, "", "None"):
                self._pending.append((np.zeros(0, np.int64), np.zeros(0, np.uint8), np.zeros(0, np.uint8)))
                self.p.mapper.batches += 1
                await self._chunk_if_due()
                return
            self.timing.tagger_epoch_utc_ps = tagger_epoch_utc_ps_of(int(metadata["start_ps"]),
                                                                     start_time)  # type: ignore[arg-type]
            self.p.tagger_epoch_utc_ps = self.timing.tagger_epoch_utc_ps
            self._make_mapper()
        assert self._mapper is not None
        mapped = await asyncio.to_thread(self._mapper.map_batch, timestamps_ps, channels)
        self._pending.append((mapped.pulse_index, mapped.basis, mapped.bit))
        await self._chunk_if_due()

    async def _chunk_if_due(self) -> None:
        if len(self._pending) >= self.s.chunk_batches:
            await self._sift_pending()
            await self._reconcile_due(final=False)

    async def _sift_pending(self) -> None:
        if not self._pending:
            return
        idx = np.concatenate([p[0] for p in self._pending])
        basis = np.concatenate([p[1] for p in self._pending])
        bit = np.concatenate([p[2] for p in self._pending])
        bob = BobAnnouncement(pulse_index=idx, basis=basis)
        body = Sift(chunk=self.p.chunks, first_batch=self._pending_first,
                    last_batch=self.next_seq - 1, detections=int(idx.size))
        reply = await self._request(body, {"pulse_index": idx.astype("<i8").tobytes(),
                                           "basis": pack_bits(basis)})
        assert isinstance(reply.body, SiftReply)
        try:
            if reply.body.chunk != body.chunk or reply.body.detections != idx.size:
                raise ValueError(f"answer for chunk {reply.body.chunk} ({reply.body.detections} "
                                 f"detections) to chunk {body.chunk} ({idx.size})")
            alice = AliceAnnouncement(
                basis=unpack_bits(reply.message.frames["basis"], int(idx.size)),
                intensity_class=np.frombuffer(reply.message.frames["intensity_class"], np.uint8).copy())
            mask = sift_mask(bob, alice)
        except ValueError as exc:
            await self._abort(f"the satellite's sifting answer is inconsistent: {exc}")
        sifted = np.zeros(int(mask.sum()), dtype=_SIFTED)
        sifted["pulse"], sifted["basis"] = idx[mask], basis[mask]
        sifted["klass"], sifted["bit"] = alice.intensity_class[mask], bit[mask]
        self.p.sifted_tally.add_sifted(sifted["basis"], sifted["klass"])
        await asyncio.to_thread(self.ckpt.save_array, f"chunk-{self.p.chunks:06d}", sifted)
        self._sifted.append(sifted)
        if self._mapper is not None:
            det, gated = self._mapper.state.detections, self._mapper.state.gated
            d_det, d_gated = det - self.p.noise_marks[0], gated - self.p.noise_marks[1]
            self.p.noise_marks = (det, gated)
            self.p.chunk_noise.append((self.p.sifted_bits + int(sifted.size), self._noise_fraction(d_det, d_gated)))
        self.p.chunks += 1
        self.p.announced += int(idx.size)
        self.p.sifted_bits += int(sifted.size)
        self._pending_first = self.next_seq
        self._pending = []
        self.p.next_seq = self._pending_first
        assert self._mapper is not None or self.p.mapper.batches
        if self._mapper is not None:
            self.p.mapper = self._mapper.state
        await self._save()

    async def _reconcile_due(self, *, final: bool) -> None:
        seg = self.s.cascade_segment_bits if self.s.ec_method == "cascade" else self.s.ec_segment_bits
        while (nxt := next_session(self.p.reconciled_bits, self.p.sifted_bits, seg, final=final)) is not None:
            await self._reconcile(*nxt)

    def _sifted_range(self, lo: int, hi: int) -> np.ndarray:
        if len(self._sifted) > 1:
            self._sifted = [np.concatenate(self._sifted)]
        return self._sifted[0][lo:hi] if self._sifted else np.zeros(0, _SIFTED)

    async def _reconcile(self, lo: int, hi: int) -> None:
        part = self._sifted_range(lo, hi)
        priors, nu = self._error_priors(lo, hi, part)
        qber = float(min(max(priors.mean(), 0.005), 0.11)) if priors is not None else self.s.qber_prior
        try:
            if self.s.ec_method == "cascade":
                result = await self._cascade(lo, hi, part, priors)
            else:
                channel = _EcChannel(self.link, self.pass_id, self.p.ec_sessions, lo, hi - lo)
                result = await reconcile(np.ascontiguousarray(part["bit"]), qber, channel, error_probs=priors)
        except (ReconciliationError, ValueError) as exc:
            await self._abort(f"EC session {self.p.ec_sessions}: error correction failed: {exc}")
        except AuthenticationError as exc:
            await self._abort(f"EC session {self.p.ec_sessions}: a message from the satellite failed "
                              f"authentication: {exc}")
        except PeerRefused as exc:
            await self._abort(f"EC session {self.p.ec_sessions}: {exc}", notify=False)
        except (ChannelError, KeyPoolError) as exc:
            await self._abort(f"EC session {self.p.ec_sessions}: the classical channel failed: {exc}",
                              notify=False)
        kept = result.kept_mask
        flips = part["bit"][kept] ^ result.corrected_bits
        self.p.tally.add_sifted(part["basis"][kept], part["klass"][kept])
        self.p.tally.add_sifted(part["basis"][kept], part["klass"][kept], flips.astype(float), errors=True)
        await asyncio.to_thread(self.ckpt.save_array, f"ec-{self.p.ec_sessions:04d}",
                                np.asarray(result.corrected_bits, np.uint8))
        self._kept.append(np.asarray(result.corrected_bits, np.uint8))
        self.p.ec_sessions += 1
        self.p.reconciled_bits = hi
        self.p.kept_bits += result.kept_bits
        self.p.errors += int(flips.sum())
        if result.kept_bits and flips.any():
            self.p.last_qber = float(flips.sum()) / result.kept_bits
            if nu is not None:
                # errors = Σ e_opt (1 − ν) + ν/2 over the kept bits: solve for e_opt. The
                # signal's own error rate (polarisation contrast) hardly changes in a pass:
                # average it over the sessions, weighted by their kept bits.
                k_nu = nu[kept]
                e_opt = (float(flips.sum()) - 0.5 * float(k_nu.sum())) / max(1.0, float((1 - k_nu).sum()))
                e_opt = min(max(e_opt, 0.0005), 0.2)
                w = result.kept_bits / max(1, self.p.kept_bits)
                self.p.e_opt = e_opt if self.p.e_opt is None else (1 - w) * self.p.e_opt + w * e_opt
        self.p.leaked_bits += result.leaked_bits
        self.p.disclosed_bits += result.disclosed_bits
        self.p.ec_blocks += len(result.blocks)
        self.p.ec_failed_blocks += result.failed_blocks
        self.p.ec_round_trips += result.round_trips
        await self._save()
        log.info("pass %s: EC session %d over %d bits: %d kept, QBER %.2f %%, f %.3f",
                 self.pass_id, self.p.ec_sessions - 1, hi - lo, result.kept_bits,
                 100 * result.qber_measured, result.efficiency_f)

    async def _cascade(self, lo: int, hi: int, part: np.ndarray, priors: np.ndarray | None) -> ReconciliationResult:
        """One Cascade session over sifted bits [lo, hi): Alice discloses her vacuum-class
        bits (~50 % errors: one leaked bit each is cheaper than Cascade's parities), Cascade
        corrects the rest, its blocks sized from their mean prior error rate."""
        channel = _CascadeEcChannel(self.link, self.pass_id, self.p.ec_sessions, lo, hi - lo)
        vac = part["klass"] == 2
        n_vac = int(vac.sum())
        got = await channel.vacuum(VacuumDiscloseRequest(vacuum_bits=n_vac))
        try:
            alice_vac = unpack_bits(got.bits, n_vac)
        except ValueError as exc:
            raise ReconciliationError(f"the satellite's vacuum-class bits: {exc}") from None
        if got.vacuum_bits != n_vac:
            raise ReconciliationError(f"the satellite disclosed {got.vacuum_bits} vacuum-class bits, "
                                      f"asked {n_vac}")
        rest = np.ascontiguousarray(part["bit"][~vac])
        if rest.size < 2:
            # Cascade needs two bits: a session with fewer besides the vacuum class (only a
            # whole pass that tiny, see next_session) skips setup and parities, closes at
            # once, and both ends drop its non-vacuum bit(s), counted as discarded.
            fin = await channel.finish(CascadeFinishRequest(parity_requests=0, leaked_bits=0))
            if fin.leaked_bits != 0:
                raise ReconciliationError(f"the satellite counts {fin.leaked_bits} revealed parities "
                                          "in a session without Cascade")
            log.info("pass %s: EC session %d has %d non-vacuum bit(s): dropped (discarded), "
                     "%d vacuum-class bits kept", self.pass_id, self.p.ec_sessions, rest.size, n_vac)
            return ReconciliationResult(corrected_bits=alice_vac, kept_mask=vac.copy(), leaked_bits=n_vac,
                                        disclosed_bits=n_vac, qber_estimate=self.s.qber_prior,
                                        qber_measured=0.0, efficiency_f=float("nan"), round_trips=2,
                                        blocks=())
        # Cascade needs the expected QBER, not LDPC's safety margin (too high a QBER only
        # makes its first blocks smaller and costs parities; it cannot make it fail).
        q = (float(min(max(priors[~vac].mean() / _QBER_MARGIN, 0.005), 0.11)) if priors is not None and rest.size
             else self.s.qber_prior)
        res = await cascade_reconcile(rest, q, channel, _CASCADE)
        corrected = np.array(part["bit"], dtype=np.uint8)
        corrected[~vac] = res.corrected_bits
        corrected[vac] = alice_vac
        n = int(corrected.size)
        errors = int((corrected != part["bit"]).sum())
        leaked = res.leaked_bits + n_vac
        h = _h(errors / n) if n else 0.0
        return replace(res, corrected_bits=corrected, kept_mask=np.ones(n, dtype=bool), leaked_bits=leaked,
                       disclosed_bits=res.disclosed_bits + n_vac, qber_estimate=q,
                       qber_measured=errors / n if n else 0.0,
                       efficiency_f=leaked / (n * h) if h > 0 else float("nan"),
                       round_trips=res.round_trips + 1)

    def _noise_fraction(self, detections: int, gated: int) -> float:
        """Fraction of the gated detections that are background: background arrives
        uniformly in time, so the detections outside the gate (2g of every pulse period T
        is gate) tell how many fell inside it."""
        g2 = 2 * self.s.gate_ps
        period = self.timing.period_ps
        outside = max(0, detections - gated)
        if gated <= 0 or g2 >= period:
            return 0.0
        return min(1.0, outside * g2 / (period - g2) / gated)

    def _error_priors(self, lo: int, hi: int, part: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Per-bit error probabilities of sifted bits [lo, hi) before EC, from no disclosed
        bit, and each bit's background fraction ν.

        Background clicks arrive uniformly in time, so a chunk's detections outside the gate
        tell its background fraction ν (the gate is 2g of every period T); the class is
        Alice's random label, so class k gets the background in proportion to its
        probability p_k: ν_k = ν · p_k · n / n_k (vacuum: ν_k ≈ 1). A background click is a
        coin toss, the signal errs at e_opt (its polarisation contrast; calibrated on the
        sessions so far, Liao's 280:1, 0.36 %, to begin with): P(error) = e_opt (1 − ν_k)
        + ν_k / 2, with a margin — a block decoded at too low a QBER fails and costs all its
        bits. On the Micius pass ν goes 5.6 % → 0.8 % → 3.4 % along the pass."""
        if not self.p.chunk_noise or part.size == 0:
            return None, None
        probs_k = np.asarray(self.s.security.probabilities, dtype=np.float64)
        ends = np.array([e for e, _ in self.p.chunk_noise], dtype=np.int64)
        fracs = np.array([f for _, f in self.p.chunk_noise], dtype=np.float64)
        starts = np.concatenate(([0], ends[:-1]))
        pos = np.arange(lo, hi, dtype=np.int64)
        chunk = np.minimum(np.searchsorted(ends, pos, side="right"), ends.size - 1)
        klass = part["klass"].astype(np.int64)
        counts = np.zeros((ends.size, 3))
        for c in np.unique(chunk):  # each chunk's class shares, from all its sifted bits
            a, b = int(starts[c]), int(ends[c])
            counts[c] = np.bincount(self._sifted_range(a, b)["klass"].astype(np.int64), minlength=3)[:3]
        n = counts.sum(axis=1, keepdims=True)
        share = np.where(counts > 0, probs_k[None, :] * n / np.maximum(counts, 1.0), 1.0)
        nu = np.minimum(1.0, fracs[chunk] * share[chunk, klass])
        e_opt = self.p.e_opt if self.p.e_opt is not None else _E_OPT_PRIOR
        priors = np.clip((e_opt * (1 - nu) + 0.5 * nu) * _QBER_MARGIN, 1e-4, 0.49)
        return priors, nu

    async def _save(self) -> None:
        self.p.requests = self.link.requests
        await asyncio.to_thread(self.ckpt.save, self.p)

    # -- the end -------------------------------------------------------------------------
    async def finish(self, *, end_of_stream_s: float | None = None) -> KeyReport:
        """Sift and reconcile what is left, then estimate, verify, hash and store."""
        t_end = time.perf_counter() if end_of_stream_s is None else end_of_stream_s
        await self._sift_pending()
        await self._reconcile_due(final=True)
        counts = self.p.tally.counts()
        reply, fin = await self._send_finalize(counts)
        key = np.concatenate(self._kept) if self._kept else np.zeros(0, np.uint8)
        estimate = await asyncio.to_thread(secret_key_length, counts, fin.leaked_ec_bits, self.s.security)
        ell = estimate.key_length_bits if key.size else 0
        report = self._report(estimate=estimate, fin=fin)
        await self._check_figures(fin, ell, key, report)
        pa_seed = await self._verify_key(key, reply.message.frames, fin, report)
        final = await self._confirm_final(key, pa_seed, ell, report)
        n_blocks = await self._store_final(final, fin.replenish_bits, report)
        report.final_bits = int(final.size)
        report.replenished_auth_bits = fin.replenish_bits
        report.stored_bits = n_blocks * 256
        report.key_blocks = n_blocks
        report.outcome = "stored" if n_blocks else "empty"
        report.reason = estimate.reason or ""
        report.end_of_stream_to_key_s = time.perf_counter() - t_end
        report.duration_s = time.time() - self.p.started_s
        report.auth_messages = 2 * self.link.tagged
        self.state = "done"
        await asyncio.to_thread(self.ckpt.wipe)
        return report

    async def _send_finalize(self, counts: SiftedCounts) -> tuple[Any, FinalizeReply]:
        """Our pass totals to the satellite; its reply (with the seed frames) and its figures."""
        z, x = counts.basis("Z"), counts.basis("X")
        body = Finalize(chunks=self.p.chunks, sifted_bits=self.p.sifted_bits, kept_bits=self.p.kept_bits,
                        ec_sessions=self.p.ec_sessions, leaked_ec_bits=self.p.leaked_bits,
                        counts_z=BasisCountsMsg.model_validate(z.model_dump()),
                        counts_x=BasisCountsMsg.model_validate(x.model_dump()))
        reply = await self._request(body)
        fin = reply.body
        assert isinstance(fin, FinalizeReply)
        return reply, fin

    async def _check_figures(self, fin: FinalizeReply, ell: int, key: np.ndarray,
                             report: KeyReport) -> None:
        """Abort unless the satellite's λ_EC, ℓ and kept bits agree with ours."""
        if fin.leaked_ec_bits < self.p.leaked_bits or fin.key_length_bits != ell or fin.kept_bits != key.size:
            await self._abort(f"the satellite's figures (λ_EC {fin.leaked_ec_bits}, ℓ {fin.key_length_bits}, "
                              f"{fin.kept_bits} kept) differ from ours ({self.p.leaked_bits}, {ell}, {key.size}): "
                              "both ends must run the same estimation with the same parameters",
                              report=report)

    async def _verify_key(self, key: np.ndarray, frames: dict[str, bytes], fin: FinalizeReply,
                          report: KeyReport) -> np.ndarray:
        """Check our key's verification tag against the satellite's; returns the PA seed."""
        try:
            vseed = VerificationSeed.from_bytes(frames["verification_seed"],
                                                _tag_bits(self.s.security.epsilon_cor))
            pa_seed = unpack_bits(frames["pa_seed"], fin.pa_seed_bits)
        except ValueError as exc:
            await self._abort(f"the satellite's seeds are malformed: {exc}", report=report)
        ok = tags_match(await asyncio.to_thread(verification_tag, key, vseed), frames["verification_tag"])
        report.verification_passed = ok
        report.verification_tag_bits = vseed.tag_bits
        if not ok:
            await self._request(Confirm(verified=False, final_bits=0, reason="verification tags differ"))
            await self._abort("verification failed: the corrected keys differ (EC converged to a "
                              "wrong word); nothing stored", report=report, notify=False)
        return pa_seed

    async def _confirm_final(self, key: np.ndarray, pa_seed: np.ndarray, ell: int,
                             report: KeyReport) -> np.ndarray:
        """Hash the key to ℓ bits and have the satellite confirm it stored its copy."""
        final = await asyncio.to_thread(toeplitz_hash, key, pa_seed, ell) if ell else np.zeros(0, np.uint8)
        conf = (await self._request(Confirm(verified=True, final_bits=int(final.size)))).body
        assert isinstance(conf, ConfirmReply)
        if not conf.stored:
            await self._abort("the satellite did not store the key", report=report, notify=False)
        return final

    async def _store_final(self, final: np.ndarray, r: int, report: KeyReport) -> int:
        """Replenish the auth pool with the first ``r`` bits, deposit the rest in 256-bit
        blocks (once per pass); returns the number of blocks."""
        try:
            if r:
                await asyncio.to_thread(self.link.pool.replenish, final[:r])
            stored = final[r:]
            n_blocks = stored.size // 256
            if n_blocks and not self.keystore.has_pass(self.s.satellite, self.pass_id):
                await asyncio.to_thread(
                    self.keystore.deposit, self.s.satellite, self.pass_id, stored,
                    key_ids=derive_key_ids(f"{self.s.satellite}/{self.s.station}", self.pass_id, n_blocks))
        except (KeyPoolError, OSError, ValueError) as exc:
            await self._abort(f"storing the key failed: {exc}", report=report, notify=False)
        return n_blocks

    def _report(self, *, estimate: Any = None, fin: FinalizeReply | None = None) -> KeyReport:
        m = self.p.mapper
        params = self.s.security
        # f against the Shannon limit of the kept bits as they are: per basis and class
        # (the vacuum class's ~50 % and the signal's ~1 % are not one binary channel; h of
        # the overall QBER would understate the limit and give f < 1).
        limit = sum(n * _h(e / n) for ns, es in zip(self.p.tally.sifted, self.p.tally.errors, strict=True)
                    for n, e in zip(ns, es, strict=True) if n and e)
        f = self.p.leaked_bits / limit if limit > 0 else float("nan")
        return KeyReport(
            pass_id=self.pass_id, station=self.s.station, satellite=self.s.satellite,
            outcome="aborted", detections=m.detections, gated_detections=m.gated,
            multi_clicks=m.multi_clicks, announced=self.p.announced, sifted_bits=self.p.sifted_bits,
            sifted=basis_class_table(self.p.sifted_tally.sifted),
            kept=basis_class_table(self.p.tally.sifted), errors=basis_class_table(self.p.tally.errors),
            qber=basis_class_table(self.p.tally.errors, self.p.tally.sifted),
            qber_overall=self.p.errors / self.p.kept_bits if self.p.kept_bits else None,
            ec=EcFigures(sessions=self.p.ec_sessions, blocks=self.p.ec_blocks,
                         failed_blocks=self.p.ec_failed_blocks, round_trips=self.p.ec_round_trips,
                         kept_bits=self.p.kept_bits, leaked_bits=fin.leaked_ec_bits if fin else self.p.leaked_bits,
                         disclosed_bits=self.p.disclosed_bits, efficiency_f=None if f != f else f),
            decoy=decoy_figures(estimate) if estimate is not None else None,
            key_length_bits=estimate.key_length_bits if estimate is not None else None,
            epsilon_sec=params.epsilon_sec, epsilon_cor=params.epsilon_cor,
            duration_s=time.time() - self.p.started_s)

    async def _request(self, body: Any, frames: dict[str, bytes] | None = None) -> Any:
        try:
            return await self.link.request(self.pass_id, body, frames)
        except AuthenticationError as exc:
            await self._abort(f"a message from the satellite failed authentication: {exc}")
        except PeerRefused as exc:
            await self._abort(f"the satellite refused {body.TYPE}: {exc}", notify=False)
        except (ChannelError, KeyPoolError) as exc:
            await self._abort(f"the classical channel failed during {body.TYPE}: {exc}", notify=False)

    async def _abort(self, reason: str, *, report: KeyReport | None = None, notify: bool = True) -> None:
        self.state = "aborted"
        if notify:
            try:
                await self.link.request(self.pass_id, Abort(reason=reason[:2000]))
            except (ChannelError, AuthenticationError, KeyPoolError) as exc:
                log.warning("pass %s: could not tell the satellite of the abort: %s", self.pass_id, exc)
        rep = report or self._report()
        rep.outcome, rep.reason = "aborted", reason
        await asyncio.to_thread(self.ckpt.wipe)
        log.error("pass %s: key discarded: %s", self.pass_id, reason)
        raise PassAborted(reason, rep)


#: A session during the pass leaves at least this many sifted bits behind it, so the pass
#: never ends with a stub session (it joins the last one instead): each session costs one
#: pad each way (Cascade) and a Cascade session needs >= 2 bits besides the vacuum class.
MIN_TAIL_BITS = 8192


def next_session(reconciled: int, sifted: int, segment: int, *, final: bool) -> tuple[int, int] | None:
    """The next EC session's range [lo, hi) of the sifted key, or None if none is due.

    During the pass a ``segment`` is reconciled once ``MIN_TAIL_BITS`` more are sifted
    after it; at the end of the pass the rest is one session, or a segment and the rest
    when the rest would exceed 1.25 segments. So every session but a whole pass's only one
    has at least ``min(segment // 4, MIN_TAIL_BITS)`` bits: a tiny tail is folded into the
    last session."""
    left = sifted - reconciled
    if left <= 0:
        return None
    if not final:
        return (reconciled, reconciled + segment) if left >= segment + MIN_TAIL_BITS else None
    if left - segment < max(segment // 4, MIN_TAIL_BITS):
        return reconciled, sifted
    return reconciled, reconciled + segment


_QBER_MARGIN = 1.10
#: Cascade as ec tuned it (k1 = 1/QBER, 4 passes, plain bisection). A session's round trips
#: cost no auth pool now (one closing exchange per session is tagged, over the transcript),
#: only latency: on the Micius pass k1 = 1.4/QBER gave f 1.097 instead of 1.108, 479 round
#: trips instead of 284 and the same final key within the run-to-run spread (264,154 vs
#: 264,127), so the default stays.
_CASCADE = CascadeConfig()
_E_OPT_PRIOR = 0.0036
_SIFTED = np.dtype([("pulse", "<i8"), ("basis", "u1"), ("klass", "u1"), ("bit", "u1")])


def _h(p: float) -> float:
    from postprocessing.reconciliation import binary_entropy

    return binary_entropy(p)


def _tag_bits(epsilon_cor: float) -> int:
    from postprocessing.verification import verification_tag_bits

    return verification_tag_bits(epsilon_cor)


__all__ = ["MIN_TAIL_BITS", "Checkpoint", "GroundSettings", "PassAborted", "PassDistiller", "next_session"]
