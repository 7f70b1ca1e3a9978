"""The simulated satellite (Alice): her half of every protocol step, over the channel.

She knows what she sent (``sent_pulses(seed, n)``, the simulator's ground truth, with the
seed from her own config); she answers the ground's sifting announcements with her bases
and intensity classes, its reconciliation requests from her sifted bits (the ec stage's
:class:`~postprocessing.reconciliation.alice.AliceReconciler` for LDPC sessions, its
:class:`~postprocessing.reconciliation.cascade.CascadeAlice` for Cascade sessions, whichever
the ground opens the session with; one method per pass), computes the key length
from the counts, draws the verification and privacy-amplification seeds, and on the
ground's confirmation stores the final key in her own key store for that station
(replenishing the authentication pool first).

Idempotent where a resumed ground station repeats itself: a chunk announced again must
be identical (and is not counted twice); an EC request repeated verbatim gets the reply
it got before (nothing more is disclosed); finalize is answered once and then replayed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drivers.timetagger.bb84 import sent_pulses
from postprocessing.amplification import toeplitz_hash, toeplitz_seed_bits
from postprocessing.auth import Direction, KeyPool
from postprocessing.bits import pack_bits, unpack_bits
from postprocessing.channel.framing import Message, dump_model, lower_bytes
from postprocessing.channel.link import ChannelServer, Refusal
from postprocessing.channel.messages import (
    Abort,
    AbortReply,
    Body,
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
from postprocessing.estimation import secret_key_length
from postprocessing.keystore import KeyStore, derive_key_ids
from postprocessing.reconciliation import (
    FinishRequest,
    ReconciliationError,
    RevealRequest,
    SyndromeRequest,
)
from postprocessing.reconciliation.alice import AliceReconciler
from postprocessing.reconciliation.cascade import (
    CascadeAlice,
    CascadeFinishReply,
    CascadeFinishRequest,
    CascadeSetupRequest,
    ParityRequest,
)
from postprocessing.satellite.config import SatelliteConfig
from postprocessing.sifting import BobAnnouncement, SiftTally, counts_from_messages
from postprocessing.verification import new_verification_seed, verification_tag

log = logging.getLogger(__name__)

_EC_REQUESTS: dict[str, type[Any]] = {
    "syndromes": SyndromeRequest, "reveal": RevealRequest, "finish": FinishRequest,
    "cascade_setup": CascadeSetupRequest, "cascade_parities": ParityRequest,
    "cascade_finish": CascadeFinishRequest, "cascade_vacuum": VacuumDiscloseRequest}
_EC_ANSWER = {"syndromes": "answer_syndromes", "reveal": "answer_reveal", "finish": "answer_finish",
              "cascade_setup": "answer_setup", "cascade_parities": "answer_parities",
              "cascade_finish": "answer_finish", "cascade_vacuum": "answer_vacuum"}
#: The reconciliation method each EC op belongs to; a session's first op names its method
#: (LDPC sessions open with ``syndromes``, Cascade sessions with ``cascade_setup``).
_EC_METHOD = {"syndromes": "ldpc", "reveal": "ldpc", "finish": "ldpc", "cascade_setup": "cascade",
              "cascade_parities": "cascade", "cascade_finish": "cascade", "cascade_vacuum": "cascade"}
_EC_OPENING = {"ldpc": "syndromes", "cascade": "cascade_vacuum"}


class _CascadeSession:
    """Alice's Cascade session over a range of sifted bits: her vacuum-class bits are
    disclosed outright (``cascade_vacuum``, first), Cascade runs over the others. Keeps
    every bit; ``leaked_bits`` = revealed parities + disclosed vacuum bits."""

    def __init__(self, bits: np.ndarray, klass: np.ndarray, rng: np.random.Generator) -> None:
        self._vacuum = klass == 2
        self._n = int(bits.size)
        self._vacuum_bits = bits[self._vacuum]
        # Fewer than two bits besides the vacuum class: no Cascade (it needs two); the
        # session closes right after the disclosure and its non-vacuum bit is dropped.
        rest = bits[~self._vacuum]
        self.cascade = CascadeAlice(rest, random_bytes=rng.bytes) if rest.size >= 2 else None
        self.disclosed = False
        self._closed = False

    def answer_vacuum(self, request: VacuumDiscloseRequest) -> VacuumDiscloseReply:
        if request.vacuum_bits != self._vacuum_bits.size:
            raise ReconciliationError(f"the ground counts {request.vacuum_bits} vacuum-class bits, "
                                      f"the satellite {self._vacuum_bits.size}")
        self.disclosed = True
        return VacuumDiscloseReply(vacuum_bits=int(self._vacuum_bits.size), bits=pack_bits(self._vacuum_bits))

    def _opened(self, op: str) -> None:
        if not self.disclosed:
            raise ReconciliationError(f"cascade {op} before cascade_vacuum")

    def _cascade(self, op: str) -> CascadeAlice:
        if self.cascade is None:
            raise ReconciliationError(f"cascade {op}: the session has {self._n - self._vacuum_bits.size} "
                                      "bit(s) besides the vacuum class, too few for Cascade (finish it "
                                      "with 0 requests and 0 parities)")
        return self.cascade

    def answer_setup(self, request: CascadeSetupRequest) -> Any:
        self._opened("setup")
        return self._cascade("setup").answer_setup(request)

    def answer_parities(self, request: ParityRequest) -> Any:
        self._opened("parities")
        return self._cascade("parities").answer_parities(request)

    def answer_finish(self, request: CascadeFinishRequest) -> Any:
        self._opened("finish")
        if self.cascade is not None:
            return self.cascade.answer_finish(request)
        if self._closed or (request.parity_requests, request.leaked_bits) != (0, 0):
            raise ReconciliationError("cascade finish of a session without Cascade: expected 0 "
                                      f"requests and 0 parities once, got {request.parity_requests} "
                                      f"and {request.leaked_bits}")
        self._closed = True
        return CascadeFinishReply(leaked_bits=0)

    @property
    def finished(self) -> bool:
        return self.disclosed and (self.cascade.finished if self.cascade is not None else self._closed)

    @property
    def leaked_bits(self) -> int:
        cascade = self.cascade.leaked_bits if self.cascade is not None else 0
        return cascade + (int(self._vacuum_bits.size) if self.disclosed else 0)

    def kept_mask(self) -> np.ndarray:
        """Every bit, or (a session too small for Cascade) its vacuum-class bits only."""
        return np.ones(self._n, dtype=bool) if self.cascade is not None else self._vacuum.copy()


@dataclass
class _EcSession:
    offset_bits: int
    length_bits: int
    method: str
    reconciler: AliceReconciler | _CascadeSession
    replies: dict[str, tuple[dict[str, Any], tuple[bytes, ...]]] = field(default_factory=dict)


@dataclass
class _Pass:
    station: str
    pass_id: str
    state: str = "open"  # open → finalized → stored | aborted
    reason: str = ""
    chunk_digests: list[str] = field(default_factory=list)
    sifted_index: list[np.ndarray] = field(default_factory=list)
    sifted_total: int = 0
    last_announced: int = -1
    ec: dict[int, _EcSession] = field(default_factory=dict)
    exchanges: int = 0
    finalize_reply: tuple[FinalizeReply, dict[str, bytes]] | None = None
    final_key: np.ndarray | None = field(default=None, repr=False)
    stored_bits: int = 0
    replenished_bits: int = 0

    def index(self) -> np.ndarray:
        if len(self.sifted_index) > 1:
            self.sifted_index = [np.concatenate(self.sifted_index)]
        return self.sifted_index[0] if self.sifted_index else np.zeros(0, np.int64)

    def wipe(self) -> None:
        self.sifted_index = []
        self.ec = {}
        self.final_key = None
        self.finalize_reply = None


class PassJournal:
    """The satellite's durable record of each pass's state (``<dir>/<station>/<pass>.json``,
    0600 in 0700 directories, written whole and renamed into place): no bits, no seeds, only
    the state and the reason. A satellite restarted mid-pass has lost the session (its
    disclosures included), so it refuses the pass cleanly instead of starting it over."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def _path(self, station: str, pass_id: str) -> Path:
        return self.dir / station / f"{pass_id}.json"  # both names are pattern-checked: no '/', no '..'

    def state(self, station: str, pass_id: str) -> tuple[str, str] | None:
        path = self._path(station, pass_id)
        try:
            data = json.loads(path.read_text())
            return str(data["state"]), str(data.get("reason", ""))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Unreadable: treat as interrupted, which refuses the pass (never reopens it).
            return "open", f"the pass journal {path} is unreadable ({exc})"

    def record(self, station: str, pass_id: str, state: str, reason: str = "") -> None:
        d = self.dir / station
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        os.chmod(d, 0o700)
        path = self._path(station, pass_id)
        tmp = path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, json.dumps({"station": station, "pass_id": pass_id, "state": state,
                                     "reason": reason[:2000]}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class SatelliteService:
    """Alice for every configured station; ``await serve(stop)`` runs the channel."""

    def __init__(self, cfg: SatelliteConfig, *, pools: dict[str, KeyPool] | None = None,
                 keystore: KeyStore | None = None) -> None:
        self.cfg = cfg
        self._seed = cfg.seed
        self.pools = pools if pools is not None else {s.name: KeyPool(s.auth_pool) for s in cfg.stations}
        self.keystore = keystore if keystore is not None else KeyStore(cfg.keystore_dir)
        self._passes: dict[tuple[str, str], _Pass] = {}
        self.server: ChannelServer | None = None
        self.journal = PassJournal(cfg.state_dir / "passes")

    # -- lifecycle ---------------------------------------------------------------------
    def bind(self, endpoint: str | None = None) -> str:
        self.server = ChannelServer(endpoint or self.cfg.endpoint, pools=self.pools,
                                    handler=self.handle, on_auth_failure=self.auth_failed)
        return self.server.bound_endpoint

    async def serve(self, stop: asyncio.Event) -> None:
        if self.server is None:
            self.bind()
        assert self.server is not None
        log.info("satellite %s serving %s on %s", self.cfg.name,
                 ", ".join(self.pools) or "no station", self.server.bound_endpoint)
        await self.server.serve(stop)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for pool in self.pools.values():
            pool.close()
        self.keystore.close()

    def pass_state(self, station: str, pass_id: str) -> tuple[str, str] | None:
        """(state, reason) of a pass, for tests and the CLI; never any bits."""
        p = self._passes.get((station, pass_id))
        return (p.state, p.reason) if p is not None else None

    # -- the channel's callbacks --------------------------------------------------------
    def auth_failed(self, station: str, pass_id: str, reason: str) -> None:
        p = self._passes.get((station, pass_id))
        if p is not None and p.state in ("open", "finalized"):
            self._abort(p, f"a message failed authentication: {reason}")

    async def handle(self, station: str, msg: Message) -> tuple[Body, dict[str, bytes] | None, tuple[bytes, ...]]:
        body, pass_id = msg.body, msg.envelope.pass_id
        if isinstance(body, Hello):
            return self._hello(station, pass_id, body), None, ()
        p = self._passes.get((station, pass_id))
        if p is None:
            raise Refusal("bad_state", f"pass {pass_id} has no session: say hello first")
        if msg.tag:  # untagged session messages cost no pad (their transcript's closing tag does)
            p.exchanges += 1
        if isinstance(body, Abort):
            if p.state != "stored":
                self._abort(p, f"the ground station aborted: {body.reason}")
            return AbortReply(discarded=p.state == "aborted"), None, ()
        if p.state == "aborted":
            raise Refusal("aborted", f"pass {pass_id} was aborted: {p.reason}")
        if isinstance(body, Sift):
            reply, frames = await asyncio.to_thread(self._sift, p, body, msg)
            return reply, frames, ()
        if isinstance(body, EcOp):
            reply, extra = await asyncio.to_thread(self._ec, p, body, msg)
            return reply, None, extra
        if isinstance(body, Finalize):
            reply, frames = await asyncio.to_thread(self._finalize, p, body)
            return reply, frames, ()
        if isinstance(body, Confirm):
            return await asyncio.to_thread(self._confirm, p, body), None, ()
        raise Refusal("bad_message", f"no handler for {msg.envelope.type}")

    # -- steps ---------------------------------------------------------------------------
    def _hello(self, station: str, pass_id: str, hello: Hello) -> HelloReply:
        src = self.cfg.source
        if (hello.rep_rate_hz, hello.sync_rate_hz) != (src.rep_rate_hz, src.sync_rate_hz):
            raise Refusal("refused", f"the ground assumes {hello.rep_rate_hz:g} Hz pulses and "
                                     f"{hello.sync_rate_hz:g} Hz sync; this source sends "
                                     f"{src.rep_rate_hz:g} Hz and {src.sync_rate_hz:g} Hz")
        p = self._passes.get((station, pass_id))
        if p is None and self.keystore.has_pass(station, pass_id):
            raise Refusal("bad_state", f"the key of pass {pass_id} with {station} is already in the "
                                       "satellite's store: a pass is distilled once")
        if p is None:
            before = self.journal.state(station, pass_id)
            if before is not None and before[0] in ("open", "finalized"):
                # This satellite restarted during the pass: what it disclosed then (parities,
                # vacuum bits) is no longer counted, so the pass cannot go on or start over.
                p = self._passes[(station, pass_id)] = _Pass(station, pass_id)
                self._abort(p, f"the satellite restarted during this pass (it was {before[0]}); its "
                               "session and the count of what it disclosed were lost, so the pass is refused")
            elif before is not None and before[0] == "aborted":
                p = self._passes[(station, pass_id)] = _Pass(station, pass_id, state="aborted", reason=before[1])
            else:
                p = self._passes[(station, pass_id)] = _Pass(station, pass_id)
                self.journal.record(station, pass_id, "open")
                log.info("station %s: pass %s opened", station, pass_id)
        p.exchanges += 1
        pool = self.pools[station]
        state = {"open": "open" if p.chunk_digests else "new"}.get(p.state, p.state)
        return HelloReply(state=state, chunks_answered=len(p.chunk_digests),  # type: ignore[arg-type]
                          sifted_bits=p.sifted_total, next_ec_session=len(p.ec), reason=p.reason,
                          counters=Counters(
                              ground_to_satellite=pool.next_counter(Direction.GROUND_TO_SATELLITE),
                              satellite_to_ground=pool.next_counter(Direction.SATELLITE_TO_GROUND)))

    def _require_open(self, p: _Pass) -> None:
        if p.state != "open":
            raise Refusal("bad_state", f"pass {p.pass_id} is {p.state}: no more sifting or EC")

    def _sift(self, p: _Pass, body: Sift, msg: Message) -> tuple[SiftReply, dict[str, bytes]]:
        self._require_open(p)
        n = body.detections
        raw_idx, raw_basis = msg.frames["pulse_index"], msg.frames["basis"]
        if len(raw_idx) != 8 * n:
            raise Refusal("bad_message", f"sift chunk {body.chunk}: {len(raw_idx)} bytes of pulse "
                                         f"indices for {n} detections (expected {8 * n})")
        try:
            bob_basis = unpack_bits(raw_basis, n)
        except ValueError as exc:
            raise Refusal("bad_message", f"sift chunk {body.chunk}: basis frame: {exc}") from None
        idx = np.frombuffer(raw_idx, dtype="<i8").astype(np.int64)
        digest = hashlib.sha256(raw_idx + raw_basis).hexdigest()
        if body.chunk < len(p.chunk_digests):
            if p.chunk_digests[body.chunk] != digest:
                raise Refusal("bad_state", f"chunk {body.chunk} was announced before with other "
                                           "detections; a resumed ground station must repeat it exactly")
            new = False
        elif body.chunk == len(p.chunk_digests):
            last = p.last_announced
            try:
                BobAnnouncement(pulse_index=idx, basis=bob_basis).check()
            except ValueError as exc:
                raise Refusal("bad_message", f"sift chunk {body.chunk}: {exc}") from None
            if n and int(idx[0]) <= last:
                raise Refusal("bad_message", f"sift chunk {body.chunk} announces pulse {int(idx[0])}, "
                                             f"not after the last announced pulse {last}")
            new = True
        else:
            raise Refusal("bad_state", f"chunk {body.chunk} announced, expected chunk "
                                       f"{len(p.chunk_digests)}: chunks go in order")
        basis, _bit, klass = sent_pulses(self._seed, idx, tuple(self.cfg.source.mu_probs))
        if new:
            kept = idx[basis == bob_basis]
            p.chunk_digests.append(digest)
            if n:
                p.last_announced = int(idx[-1])
            p.sifted_index.append(kept)
            p.sifted_total += int(kept.size)
        return (SiftReply(chunk=body.chunk, detections=n, sifted_bits_total=p.sifted_total),
                {"basis": pack_bits(basis), "intensity_class": klass.astype(np.uint8).tobytes()})

    def _alice_bits(self, p: _Pass, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        idx = p.index()[lo:hi]
        basis, bit, klass = sent_pulses(self._seed, idx, tuple(self.cfg.source.mu_probs))
        return bit, basis, klass

    def _ec(self, p: _Pass, body: EcOp, msg: Message) -> tuple[EcReply, tuple[bytes, ...]]:
        self._require_open(p)
        sess = p.ec.get(body.session)
        if sess is None:
            if body.session != len(p.ec):
                raise Refusal("bad_state", f"EC session {body.session} opened, expected {len(p.ec)}")
            covered = sum(s.length_bits for s in p.ec.values())
            if body.offset_bits != covered or body.offset_bits + body.length_bits > p.sifted_total:
                raise Refusal("bad_state", f"EC session {body.session} over bits [{body.offset_bits}, "
                                           f"{body.offset_bits + body.length_bits}): sessions tile the "
                                           f"sifted key in order ({covered} reconciled, {p.sifted_total} sifted)")
            method = _EC_METHOD[body.op]
            if body.op != _EC_OPENING[method]:
                raise Refusal("bad_state", f"EC session {body.session} must open with "
                                           f"{_EC_OPENING[method]!r}, not {body.op!r}")
            earlier = {s.method for s in p.ec.values()}
            if earlier and method not in earlier:
                raise Refusal("refused", f"EC session {body.session} asks for {method}, but this "
                                         f"pass reconciles by {earlier.pop()}: both ends must use "
                                         f"one method per pass (ground [keys] ec_method)")
            bits, _, klass = self._alice_bits(p, body.offset_bits, body.offset_bits + body.length_bits)
            rng = self._rng(p, f"ec-{body.session}")
            reconciler: AliceReconciler | _CascadeSession = (
                AliceReconciler(bits, rng=rng) if method == "ldpc" else _CascadeSession(bits, klass, rng))
            sess = p.ec[body.session] = _EcSession(body.offset_bits, body.length_bits, method, reconciler)
        elif (sess.offset_bits, sess.length_bits) != (body.offset_bits, body.length_bits):
            raise Refusal("bad_state", f"EC session {body.session} is over other bits")
        elif _EC_METHOD[body.op] != sess.method:
            raise Refusal("refused", f"EC session {body.session} reconciles by {sess.method}; "
                                     f"{body.op!r} is a {_EC_METHOD[body.op]} op: both ends must "
                                     f"use the same method")
        key = hashlib.sha256(json.dumps([body.op, body.request], sort_keys=True).encode()
                             + b"".join(hashlib.sha256(f).digest() for f in msg.extra_frames)).hexdigest()
        if key in sess.replies:  # a resumed ground repeating itself: nothing new disclosed
            reply, extra = sess.replies[key]
            return EcReply(session=body.session, op=body.op, reply=reply), extra
        try:
            request = _EC_REQUESTS[body.op].model_validate(lower_bytes(body.request, msg.extra_frames))
        except ValueError as exc:
            raise Refusal("bad_message", f"EC {body.op}: {exc}") from None
        try:
            answer = getattr(sess.reconciler, _EC_ANSWER[body.op])(request)
        except ReconciliationError as exc:
            raise Refusal("refused", f"EC {body.op}: {exc}") from None
        reply, extra = dump_model(answer)
        sess.replies[key] = (reply, extra)
        return EcReply(session=body.session, op=body.op, reply=reply), extra

    def _finalize(self, p: _Pass, body: Finalize) -> tuple[FinalizeReply, dict[str, bytes]]:
        if p.finalize_reply is not None:
            return p.finalize_reply
        self._require_open(p)
        covered = sum(s.length_bits for s in p.ec.values())
        if covered != p.sifted_total or not all(s.reconciler.finished for s in p.ec.values()):
            raise Refusal("bad_state", f"finalize before every sifted bit was reconciled "
                                       f"({covered} of {p.sifted_total})")
        if body.sifted_bits != p.sifted_total or body.chunks != len(p.chunk_digests):
            raise Refusal("bad_state", f"the ground counts {body.sifted_bits} sifted bits in "
                                       f"{body.chunks} chunks, the satellite {p.sifted_total} in "
                                       f"{len(p.chunk_digests)}")
        keys, tally = [], SiftTally()
        for s in sorted(p.ec.values(), key=lambda s: s.offset_bits):
            mask = s.reconciler.kept_mask()
            bits, basis, klass = self._alice_bits(p, s.offset_bits, s.offset_bits + s.length_bits)
            keys.append(bits[mask])
            tally.add_sifted(basis[mask], klass[mask])
        key = np.concatenate(keys) if keys else np.zeros(0, np.uint8)
        counts = counts_from_messages(body.counts_z, body.counts_x)
        mine = [[c.sifted_bits for c in counts.basis(b).by_class()] for b in ("Z", "X")]
        if mine != tally.sifted or key.size != body.kept_bits:
            raise Refusal("bad_state", f"the ground's kept counts {mine} ({body.kept_bits} bits) differ "
                                       f"from the satellite's {tally.sifted} ({key.size} bits)")
        leaked = sum(s.reconciler.leaked_bits for s in p.ec.values())
        if leaked < body.leaked_ec_bits:
            raise Refusal("bad_state", f"the ground counts {body.leaked_ec_bits} leaked bits, the "
                                       f"satellite {leaked}")
        params = self.cfg.security
        result = secret_key_length(counts, leaked, params)
        ell = result.key_length_bits if key.size else 0
        rng = self._rng(p, "finalize")
        vseed = new_verification_seed(params.epsilon_cor, random_bytes=lambda n: rng.bytes(n))
        vtag = verification_tag(key, vseed)
        seed_n = toeplitz_seed_bits(key.size, ell) if key.size else 0
        pa_seed = rng.integers(0, 2, seed_n, dtype=np.uint8)
        p.final_key = toeplitz_hash(key, pa_seed, ell) if ell else np.zeros(0, np.uint8)
        # Replenish what this pass's messages consumed: one pad each way per exchange,
        # the confirmation included; never more than the key holds.
        want = 256 * (p.exchanges + 1)
        replenish = min(want, ell - ell % 256)
        reply = FinalizeReply(key_length_bits=ell, leaked_ec_bits=leaked, kept_bits=int(key.size),
                              pa_seed_bits=seed_n, replenish_bits=replenish,
                              epsilon_sec=params.epsilon_sec, epsilon_cor=params.epsilon_cor,
                              reason=result.reason or "")
        frames = {"verification_seed": vseed.to_bytes(), "verification_tag": vtag,
                  "pa_seed": pack_bits(pa_seed)}
        p.finalize_reply = (reply, frames)
        p.state = "finalized"
        self.journal.record(p.station, p.pass_id, "finalized")
        p.sifted_index = []
        p.ec = {}
        return reply, frames

    def _confirm(self, p: _Pass, body: Confirm) -> ConfirmReply:
        if p.state == "stored":
            return ConfirmReply(stored=True, stored_bits=p.stored_bits, replenished_bits=p.replenished_bits)
        if p.state != "finalized" or p.finalize_reply is None or p.final_key is None:
            raise Refusal("bad_state", f"confirm for pass {p.pass_id} in state {p.state}")
        reply = p.finalize_reply[0]
        if not body.verified:
            self._abort(p, f"verification failed at the ground: {body.reason}")
            return ConfirmReply(stored=False, stored_bits=0, replenished_bits=0)
        if body.final_bits != reply.key_length_bits:
            self._abort(p, f"the ground's key has {body.final_bits} bits, ours {reply.key_length_bits}")
            raise Refusal("bad_state", p.reason)
        key, r = p.final_key, reply.replenish_bits
        if r:
            self.pools[p.station].replenish(key[:r])
        stored = key[r:]
        n_blocks = stored.size // 256
        if n_blocks:
            self.keystore.deposit(p.station, p.pass_id, stored,
                                  key_ids=derive_key_ids(self.link_name(p.station), p.pass_id, n_blocks))
        p.state, p.stored_bits, p.replenished_bits = "stored", n_blocks * 256, r
        self.journal.record(p.station, p.pass_id, "stored")
        p.wipe()
        log.info("station %s: pass %s stored, %d key bits (%d replenished the auth pool)",
                 p.station, p.pass_id, p.stored_bits, r)
        return ConfirmReply(stored=True, stored_bits=p.stored_bits, replenished_bits=r)

    def link_name(self, station: str) -> str:
        return f"{self.cfg.name}/{station}"

    def _abort(self, p: _Pass, reason: str) -> None:
        p.state, p.reason = "aborted", reason
        self.journal.record(p.station, p.pass_id, "aborted", reason)
        p.wipe()
        log.warning("station %s: pass %s aborted, its key discarded: %s", p.station, p.pass_id, reason)

    def _rng(self, p: _Pass, purpose: str) -> np.random.Generator:
        if self.cfg.deterministic_randomness:
            words = hashlib.sha256(f"{p.station}\x00{p.pass_id}\x00{purpose}".encode()).digest()
            entropy = [self._seed, *np.frombuffer(words, dtype="<u4").tolist()]
        else:
            entropy = secrets.randbits(256)
        return np.random.Generator(np.random.PCG64(np.random.SeedSequence(entropy)))


__all__ = ["SatelliteService"]
