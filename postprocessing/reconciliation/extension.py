"""Extra parity checks for blind rounds: the rows both sides derive for a failing block.

When a block does not decode, Alice discloses more parities of its frame. Revealing key
bits would waste most of each disclosed bit (a key bit Bob already holds with error rate
q tells him only h(q) bits about the errors); a parity over ``degree`` key positions is
wrong with probability (1 − (1 − 2q)^degree)/2, close to 1/2 for a degree of about 1/q,
so each disclosed parity carries nearly one bit about the errors (Bob decodes those
rounds with product-sum, which, unlike min-sum, weighs such unreliable checks right). Bob decodes again with
the rows stacked under the code's parity-check matrix.

Row i of block b touches ``degree`` distinct key positions of the block's frame, drawn by
numpy's PCG64 seeded with (EXTENSION_VERSION, b, i, degree), so both sides derive the same
rows from the message alone. Rows touch only key positions (never punctured or shortened
ones), which keeps the leakage count m − p + r exact (docs/_reconciliation.md).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from postprocessing.reconciliation.codes import LdpcCode

EXTENSION_VERSION = 1
MIN_PARITY_DEGREE = 4
MAX_PARITY_DEGREE = 256


def parity_degree_for(qber: float) -> int:
    """The degree that makes an extra parity wrong with probability ~0.3 at ``qber``
    (h(0.3) = 0.88 bits about the errors per disclosed bit, at a moderate check degree)."""
    q = min(max(qber, 1e-4), 0.25)
    d = math.log(1.0 - 2 * 0.3) / math.log(1.0 - 2 * q)
    return int(min(max(round(d), MIN_PARITY_DEGREE), MAX_PARITY_DEGREE))


def extension_rows(code: LdpcCode, punctured: int, shortened: int, block_index: int,
                   first: int, count: int, degree: int) -> sp.csr_matrix:
    """Rows ``first .. first+count-1`` of a block's extra parity checks (count × n, CSR)."""
    key_pos, _p, _s = code.frame_layout(punctured, shortened)
    if not 1 <= degree <= key_pos.size:
        raise ValueError(f"parity degree {degree} outside 1..{key_pos.size}")
    cols = np.empty((count, degree), dtype=np.int64)
    for r in range(count):
        rng = np.random.default_rng([EXTENSION_VERSION, block_index, first + r, degree])
        cols[r] = key_pos[rng.choice(key_pos.size, degree, replace=False)]
    rows = np.repeat(np.arange(count), degree)
    out = sp.csr_matrix((np.ones(count * degree, np.uint8), (rows, cols.ravel())),
                        shape=(count, code.n))
    out.sort_indices()
    return out
