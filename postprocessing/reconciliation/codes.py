"""The LDPC codes both sides build: irregular, girth ≥ 6, with a puncturing order.

A code is defined by its :class:`CodeSpec` (length, syndrome length, variable-node degree
distribution, seed) and the construction below, which is deterministic: the same spec
gives the same matrix bit for bit on both sides (numpy's PCG64 stream), and its SHA-256
(:attr:`LdpcCode.digest`) travels in every request so a mismatch is refused.

Construction takes a few seconds for n = 2^15, so a built code is cached on disk
(:func:`default_cache_dir`: ``$QKD_STATION_CACHE_DIR``, else ``$XDG_CACHE_HOME/qkd-station``,
else ``~/.cache/qkd-station``; one ~1 MB ``.npz`` per code, written atomically, checked
against its digest when loaded, rebuilt if anything is off) and kept in the
:class:`CodeCatalog` object:

1. variable degrees from the node-perspective distribution, exactly rounded to n nodes;
   check degrees concentrated (d or d+1 edges; the 4-cycle repair may move one more),
   the optimum for the BSC;
2. edges matched by a seeded random permutation of check sockets;
3. repeated edges and 4-cycles removed by rewiring an offending edge to a random check
   of the lowest degree that creates neither, until none is left (girth ≥ 6);
4. the untainted puncturing order (Elkouss, Martinez-Mateo, Martin 2012): low-degree
   variables such that no check has two punctured neighbours. Punctured columns then
   have disjoint supports, hence are linearly independent, which is what makes their
   random values hide as many syndrome bits (see docs/_reconciliation.md);
5. the shortening order: a seeded permutation of the other positions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from postprocessing.reconciliation.errors import ReconciliationError, ReconciliationRefused

CONSTRUCTION_VERSION = 1

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where built codes are cached (see the module docstring)."""
    env = os.environ.get("QKD_STATION_CACHE_DIR")
    if env:
        return Path(env) / "ldpc"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "qkd-station" / "ldpc"


@dataclass(frozen=True)
class CodeSpec:
    """What defines a code. ``var_degrees``/``var_fractions``: node-perspective variable
    degree distribution (fractions of the n variables)."""

    name: str
    n: int
    m: int
    var_degrees: tuple[int, ...]
    var_fractions: tuple[float, ...]
    seed: int
    # "ira": the last m columns are a dual-diagonal staircase (degree 2, the last one
    # degree 1) and the degree distribution is that of the first n - m columns;
    # "random": the distribution is over all n columns.
    structure: str = "ira"

    @property
    def rate(self) -> float:
        """Design rate 1 - m/n (the syndrome always counts m bits, full rank or not)."""
        return 1.0 - self.m / self.n


@dataclass(frozen=True)
class LdpcCode:
    """A built code: parity-check matrix (CSR, uint8), puncturing and shortening orders."""

    spec: CodeSpec
    pcm: sp.csr_matrix = field(repr=False)
    puncture_order: np.ndarray = field(repr=False)
    shorten_order: np.ndarray = field(repr=False)
    digest: str

    @property
    def code_id(self) -> str:
        return self.spec.name

    @property
    def n(self) -> int:
        return self.spec.n

    @property
    def m(self) -> int:
        return self.spec.m

    @property
    def max_punctured(self) -> int:
        return int(self.puncture_order.size)

    def frame_layout(self, punctured: int, shortened: int) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
        """(key positions, punctured positions, shortened positions) of a frame.

        Punctured: the first ``punctured`` of the puncturing order (in that order);
        shortened: the first ``shortened`` of the shortening order; key: the rest,
        increasing. Raises :class:`ReconciliationError` if the counts do not fit.
        """
        if not 0 <= punctured <= self.max_punctured:
            raise ReconciliationError(
                f"code {self.code_id}: {punctured} punctured bits requested, it allows "
                f"0..{self.max_punctured}")
        if not 0 <= shortened <= self.shorten_order.size:
            raise ReconciliationError(
                f"code {self.code_id}: {shortened} shortened bits requested, it allows "
                f"0..{self.shorten_order.size}")
        punct = self.puncture_order[:punctured]
        short = self.shorten_order[:shortened]
        mask = np.ones(self.n, dtype=bool)
        mask[punct] = False
        mask[short] = False
        return np.flatnonzero(mask), punct, short


def _degree_sequence(n: int, degrees: tuple[int, ...], fractions: tuple[float, ...]) -> np.ndarray:
    counts = np.floor(np.asarray(fractions) * n).astype(int)
    # largest remainders get the leftover nodes, so the counts sum to n exactly
    rem = np.asarray(fractions) * n - counts
    for i in np.argsort(-rem)[: n - counts.sum()]:
        counts[i] += 1
    return np.repeat(np.asarray(degrees, dtype=np.int64), counts)


def _four_cycle_edges(rows: np.ndarray, cols: np.ndarray, m: int, n: int,
                      n_fixed: int) -> np.ndarray:
    """Indices of edges to rewire: duplicates and one edge of every 4-cycle."""
    h = sp.csr_matrix((np.ones(rows.size, np.int32), (rows, cols)), shape=(m, n))
    bad: set[int] = set()
    # duplicates: sum_duplicates made entries > 1
    key = rows.astype(np.int64) * n + cols
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    dup = np.ones(rows.size, bool)
    dup[first] = False
    bad.update(np.flatnonzero(dup).tolist())
    hb = h.copy()
    hb.data[:] = 1
    overlap = (hb @ hb.T).tocoo()
    sel = (overlap.row < overlap.col) & (overlap.data > 1)
    if np.any(sel):
        # for each pair of checks sharing >= 2 variables, rewire the edge (check b, v) for
        # one shared variable v
        hcsr = hb.tocsr()
        edge_of: dict[tuple[int, int], int] = {}
        for e, (r, c) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
            edge_of.setdefault((r, c), e)
        for a, b in zip(overlap.row[sel].tolist(), overlap.col[sel].tolist(), strict=True):
            va = hcsr.indices[hcsr.indptr[a]:hcsr.indptr[a + 1]]
            vb = hcsr.indices[hcsr.indptr[b]:hcsr.indptr[b + 1]]
            for v in np.intersect1d(va, vb).tolist():
                for c in (b, a):
                    e = edge_of[(c, v)]
                    if e >= n_fixed:
                        bad.add(e)
                        break
                else:
                    continue
                break
    return np.fromiter(sorted(bad), dtype=np.int64)


def _gather(indptr: np.ndarray, indices: np.ndarray, items: np.ndarray) -> np.ndarray:
    """All ``indices`` of the compressed rows (or columns) ``items``, concatenated."""
    starts = indptr[items]
    lens = indptr[items + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return np.empty(0, dtype=indices.dtype)
    offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lens)[:-1])), lens)
    return indices[offsets + np.arange(total)]


def _rewire(rows: np.ndarray, cols: np.ndarray, check_deg: np.ndarray, bad: np.ndarray,
            m: int, n: int, rng: np.random.Generator) -> None:
    """Move each bad edge (c, v) to a check of low degree that is not within distance 2
    of v's other checks (so it closes no 4-cycle with the graph as it stands)."""
    h = sp.csr_matrix((np.ones(rows.size, np.int8), (rows, cols)), shape=(m, n))
    h.sum_duplicates()
    csr = h.tocsr()
    csc = h.tocsc()
    for e in bad.tolist():
        v = int(cols[e])
        old = int(rows[e])
        my_checks = csc.indices[csc.indptr[v]:csc.indptr[v + 1]]
        others = my_checks[my_checks != old]
        near_vars = _gather(csr.indptr, csr.indices, others)
        forbidden = np.zeros(m, dtype=bool)
        forbidden[my_checks] = True
        forbidden[_gather(csc.indptr, csc.indices, near_vars)] = True
        deg = np.where(forbidden, np.iinfo(np.int64).max, check_deg)
        lowest = np.flatnonzero(deg == deg.min())
        new = int(lowest[rng.integers(lowest.size)])
        check_deg[old] -= 1
        check_deg[new] += 1
        rows[e] = new


def build_code(spec: CodeSpec) -> LdpcCode:
    """Build the code of ``spec`` deterministically (see the module docstring)."""
    rng = np.random.default_rng([CONSTRUCTION_VERSION, spec.seed, spec.n, spec.m])
    if spec.structure == "ira":
        k = spec.n - spec.m
        fixed_rows = np.concatenate([np.arange(spec.m), np.arange(1, spec.m)])
        fixed_cols = np.concatenate([k + np.arange(spec.m), k + np.arange(spec.m - 1)])
    elif spec.structure == "random":
        k = spec.n
        fixed_rows = fixed_cols = np.empty(0, np.int64)
    else:
        raise ReconciliationError(f"code {spec.name}: unknown structure {spec.structure!r}")
    var_deg = _degree_sequence(k, spec.var_degrees, spec.var_fractions)
    var_deg = var_deg[rng.permutation(k)]
    free_edges = int(var_deg.sum())
    free_cols = np.repeat(np.arange(k, dtype=np.int64), var_deg)
    # concentrated check degrees: fill the checks with the fewest fixed edges first
    fixed_deg = np.bincount(fixed_rows, minlength=spec.m)
    total = fixed_rows.size + free_edges
    target = np.full(spec.m, total // spec.m)
    target[rng.permutation(spec.m)[: total % spec.m]] += 1
    need = np.maximum(target - fixed_deg, 0)
    short = free_edges - int(need.sum())
    if short > 0:
        need[rng.permutation(spec.m)[:short]] += 1
    free_rows = rng.permutation(np.repeat(np.arange(spec.m, dtype=np.int64), need))
    rows = np.concatenate([fixed_rows.astype(np.int64), free_rows])
    cols = np.concatenate([fixed_cols.astype(np.int64), free_cols])
    n_fixed = fixed_rows.size
    n_edges = rows.size
    check_deg = np.bincount(rows, minlength=spec.m)
    for _sweep in range(100):
        bad = _four_cycle_edges(rows, cols, spec.m, spec.n, n_fixed)
        if bad.size == 0:
            break
        _rewire(rows, cols, check_deg, bad, spec.m, spec.n, rng)
    else:
        raise ReconciliationError(f"code {spec.name}: could not remove all 4-cycles")
    pcm = sp.csr_matrix((np.ones(n_edges, np.uint8), (rows, cols)), shape=(spec.m, spec.n))
    pcm.sort_indices()
    puncture_order = _untainted_order(pcm, rng)
    rest = np.setdiff1d(np.arange(spec.n), puncture_order)
    shorten_order = rest[rng.permutation(rest.size)]
    return LdpcCode(spec=spec, pcm=pcm, puncture_order=puncture_order.astype(np.int64),
                    shorten_order=shorten_order.astype(np.int64),
                    digest=_digest(spec, pcm, puncture_order, shorten_order))


def _digest(spec: CodeSpec, pcm: sp.csr_matrix, puncture_order: np.ndarray,
            shorten_order: np.ndarray) -> str:
    """SHA-256 of the code's canonical form: name, n, m, CSR structure, both orders."""
    h = hashlib.sha256()
    h.update(f"{spec.name}|{spec.n}|{spec.m}|".encode())
    h.update(pcm.indptr.astype("<i8").tobytes())
    h.update(pcm.indices.astype("<i8").tobytes())
    h.update(puncture_order.astype("<i8").tobytes())
    h.update(shorten_order.astype("<i8").tobytes())
    return h.hexdigest()


def _cache_path(spec: CodeSpec, cache_dir: Path) -> Path:
    key = hashlib.sha256(repr((CONSTRUCTION_VERSION, spec)).encode()).hexdigest()[:20]
    return cache_dir / f"{spec.name}-{key}.npz"


def load_or_build(spec: CodeSpec, cache_dir: Path | None) -> LdpcCode:
    """The code of ``spec`` from the disk cache, or built (and cached) if absent/bad."""
    if cache_dir is None:
        return build_code(spec)
    path = _cache_path(spec, cache_dir)
    try:
        with np.load(path, allow_pickle=False) as z:
            indptr, indices = z["indptr"], z["indices"]
            punct, short = z["puncture_order"], z["shorten_order"]
            stored = str(z["digest"])
        pcm = sp.csr_matrix((np.ones(indices.size, np.uint8), indices, indptr),
                            shape=(spec.m, spec.n))
        digest = _digest(spec, pcm, punct, short)
        if digest == stored:
            return LdpcCode(spec=spec, pcm=pcm, puncture_order=punct.astype(np.int64),
                            shorten_order=short.astype(np.int64), digest=digest)
        log.warning("code cache %s does not match its digest; rebuilding", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError) as exc:
        log.warning("code cache %s unreadable (%s); rebuilding", path, exc)
    code = build_code(spec)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, indptr=code.pcm.indptr, indices=code.pcm.indices,
                     puncture_order=code.puncture_order, shorten_order=code.shorten_order,
                     digest=np.array(code.digest))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not cache code %s in %s (%s); it will be rebuilt next time",
                    spec.name, cache_dir, exc)
    return code


def _untainted_order(pcm: sp.csr_matrix, rng: np.random.Generator) -> np.ndarray:
    """Greedy untainted puncturing: lowest-degree variables first, each accepted only if
    none of its checks already has a punctured neighbour."""
    csc = pcm.tocsc()
    deg = np.diff(csc.indptr)
    order = np.lexsort((rng.random(deg.size), deg))
    tainted = np.zeros(pcm.shape[0], dtype=bool)
    chosen = []
    for v in order.tolist():
        checks = csc.indices[csc.indptr[v]:csc.indptr[v + 1]]
        if checks.size and not tainted[checks].any():
            tainted[checks] = True
            chosen.append(v)
    return np.asarray(chosen, dtype=np.int64)


# The default family: 21 codes of one length whose syndrome lengths are 10 % apart
# (m/n = 0.5 · 0.9^i, design rates 0.500 … 0.939), so shortening at most ~10 % of a frame
# reaches any rate in between. (Rates above 0.94 need degrees so low that those codes
# failed at 0.5 % QBER even after six blind rounds; a lower QBER gets the 0.939 code
# unshortened, at a higher f.) Degree distributions: docs/_reconciliation.md.
DEFAULT_N = 32768
FAMILY_M_RATIO = 0.9
FAMILY_SIZE = 21


def _family_degrees(m_fraction: float) -> tuple[tuple[int, ...], tuple[float, ...]]:
    # fewer checks hold fewer high-degree columns without 4-cycles
    if m_fraction >= 0.09:
        return (3, 6, 16), (0.7, 0.2, 0.1)
    return (3, 6, 12), (0.7, 0.2, 0.1)


def family_specs(n: int = DEFAULT_N, seed: int = 1) -> list[CodeSpec]:
    """The catalog's specs for frame length ``n`` (names carry the design rate)."""
    out = []
    for i in range(FAMILY_SIZE):
        m = int(round(n * 0.5 * FAMILY_M_RATIO**i))
        degs, fr = _family_degrees(m / n)
        out.append(CodeSpec(name=f"bsc-r{1 - m / n:.3f}-n{n}-v{CONSTRUCTION_VERSION}", n=n,
                            m=m, var_degrees=degs, var_fractions=fr, seed=seed))
    return out


class CodeCatalog:
    """The codes both sides know, by name, built (or loaded from the disk cache) on first
    use and kept by this object."""

    _default: CodeCatalog | None = None

    def __init__(self, specs: list[CodeSpec], cache_dir: Path | None = None) -> None:
        """``cache_dir``: where built codes are cached on disk (None: no disk cache)."""
        if not specs:
            raise ValueError("a catalog needs at least one code")
        self.cache_dir = cache_dir
        self._specs = {s.name: s for s in sorted(specs, key=lambda s: s.m)}
        self._codes: dict[str, LdpcCode] = {}

    @classmethod
    def default(cls) -> CodeCatalog:
        """The process-wide default catalog (codes built lazily, kept for the process)."""
        if cls._default is None:
            cls._default = cls(family_specs(), cache_dir=default_cache_dir())
        return cls._default

    @property
    def code_ids(self) -> list[str]:
        return list(self._specs)

    def spec(self, code_id: str) -> CodeSpec:
        try:
            return self._specs[code_id]
        except KeyError:
            raise ReconciliationRefused(f"code {code_id!r} is not in the catalog") from None

    def get(self, code_id: str) -> LdpcCode:
        code = self._codes.get(code_id)
        if code is None:
            code = load_or_build(self.spec(code_id), self.cache_dir)
            self._codes[code_id] = code
        return code

    def choose_spec(self, qber: float, f_start: float) -> CodeSpec:
        """The code for a first attempt at efficiency ``f_start``: the one with the most
        syndrome bits m ≤ f_start·n·h(qber), so a block of ℓ = m / (f_start·h) ≤ n key bits
        (the rest of the frame shortened) discloses f_start·ℓ·h. The smallest code if
        even that is too much (a low QBER), the largest if none suffices (a high one)."""
        from postprocessing.reconciliation.result import binary_entropy

        h = binary_entropy(qber)
        specs = list(self._specs.values())  # increasing m
        fitting = [s for s in specs if s.m <= f_start * s.n * h]
        return fitting[-1] if fitting else specs[0]

    def choose(self, qber: float, f_start: float) -> LdpcCode:
        """The code :meth:`choose_spec` names, built."""
        return self.get(self.choose_spec(qber, f_start).name)
