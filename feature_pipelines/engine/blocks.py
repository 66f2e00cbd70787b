"""Range-independent window summaries for the polars engine: exact counts, block sums and sparse tables.

A window's value is combined from power-of-two blocks of the rows inside it, never from a difference of
running sums, so it depends only on those rows: a partition computed alone is bit-identical to the same
partition inside any backfill.
"""

from __future__ import annotations

import numpy as np


def excl_cumsum(x: np.ndarray) -> np.ndarray:
    out = np.zeros(len(x) + 1, dtype=x.dtype)
    np.cumsum(x, out=out[1:])
    return out


def window_count(cum: np.ndarray, w: int) -> np.ndarray:
    """Per row, the count over the w rows ending at it, from an exclusive cumulative count (exact integers)."""
    total = len(cum) - 1
    out = np.empty(total, dtype=cum.dtype)
    out[w - 1 :] = cum[w:] - cum[: total + 1 - w]
    out[: w - 1] = cum[1:w] - cum[0]  # only padding rows start this close to the array's head
    return out


class IntervalStats:
    """Per-interval count, sum and centred sum of squares, with windowed aggregates that are range-independent.

    Sums and M2 are combined over power-of-two blocks (level k holds rows [i, i + 2**k)); a window of
    w rows combines the blocks of w's binary digits, largest first. The result depends only on the rows
    inside the window, so a partition computed alone is bit-identical to the same partition inside a
    longer backfill (a difference of prefix sums would not be). Blocks are combined with the pairwise
    update M2 = M2a + M2b + (n_b*S_a - n_a*S_b)**2 / (n_a*n_b*(n_a+n_b)) (Chan et al.), which stays
    accurate when the values are large and the spread small. Counts are exact integers (prefix sums).
    """

    def __init__(self, v: np.ndarray, p: np.ndarray, total: int, moments: bool) -> None:
        n_b = np.bincount(p, minlength=total)
        self.count = excl_cumsum(n_b)
        self.fcount = self.count.astype(np.float64)  # exact below 2**53 events
        # bincount adds each interval's values in event order: an interval's sum depends on its events only.
        s_b = np.bincount(p, weights=v, minlength=total)
        self.sums = [s_b]
        self.m2 = None
        if moments:
            mean_b = np.divide(s_b, n_b, out=np.zeros(total), where=n_b > 0)
            self.m2 = [np.bincount(p, weights=(v - mean_b[p]) ** 2, minlength=total)]

    def _n(self, k: int, start: int, size: int) -> np.ndarray:
        """Counts (float) of the level-k blocks starting at rows start .. start + size."""
        c = self.fcount
        return c[start + (1 << k) : start + (1 << k) + size] - c[start : start + size]

    def _level(self, k: int) -> None:
        while len(self.sums) <= k:
            j = len(self.sums)  # build level j from level j - 1
            h = 1 << (j - 1)
            size = len(self.sums[0]) - (1 << j) + 1
            a, b = self.sums[j - 1][:size], self.sums[j - 1][h : h + size]
            if self.m2 is not None:
                self.m2.append(merge_m2(self._n(j - 1, 0, size), a, self.m2[j - 1][:size],
                                         self._n(j - 1, h, size), b, self.m2[j - 1][h : h + size]))
            self.sums.append(a + b)

    def window(self, w: int) -> tuple:
        """(count, sum, M2) of every window of w rows; entry j is the window ending at row j + w - 1."""
        self._level(w.bit_length() - 1)
        size = len(self.sums[0]) - w + 1
        n_acc = s_acc = m2_acc = None
        off = 0
        for k in range(w.bit_length() - 1, -1, -1):
            if not w >> k & 1:
                continue
            s_blk = self.sums[k][off : off + size]
            n_blk = self._n(k, off, size)
            m2_blk = self.m2[k][off : off + size] if self.m2 is not None else None
            if n_acc is None:
                n_acc, s_acc, m2_acc = n_blk, s_blk, m2_blk
            else:
                if m2_blk is not None:
                    m2_acc = merge_m2(n_acc, s_acc, m2_acc, n_blk, s_blk, m2_blk)
                n_acc, s_acc = n_acc + n_blk, s_acc + s_blk
            off += 1 << k
        return n_acc, s_acc, m2_acc

    def ranges(self, lo: np.ndarray, hi: np.ndarray) -> tuple:
        """(count, sum, M2) of rows [lo, hi) for each pair, combining blocks of the length's binary digits."""
        length = hi - lo
        top = int(length.max()).bit_length() if len(length) else 0
        self._level(max(top - 1, 0))
        n_acc, s_acc = np.zeros(len(lo)), np.zeros(len(lo))
        m2_acc = np.zeros(len(lo)) if self.m2 is not None else None
        pos = lo.copy()
        for k in range(top - 1, -1, -1):
            take = np.flatnonzero(length >> k & 1)
            at = pos[take]
            s_blk = self.sums[k][at]
            n_blk = self.fcount[at + (1 << k)] - self.fcount[at]
            if m2_acc is not None:
                m2_acc[take] = merge_m2(n_acc[take], s_acc[take], m2_acc[take], n_blk, s_blk, self.m2[k][at])
            n_acc[take] += n_blk
            s_acc[take] += s_blk
            pos[take] += 1 << k
        return n_acc, s_acc, m2_acc



_CHUNK = 1 << 15  # rows per step of merge_m2: temporaries stay in cache and off the mmap allocator


def merge_m2(n_a, s_a, m2_a, n_b, s_b, m2_b) -> np.ndarray:
    """Centred sum of squares of the union of two disjoint samples given their counts, sums and M2s.

    When either side is empty its sum is 0.0, so the cross term's numerator is exactly 0 and a
    denominator clamped to 1 gives 0 without a mask.
    """
    out = np.empty(len(n_a))
    d = np.empty(_CHUNK)
    denom = np.empty(_CHUNK)
    for i in range(0, len(n_a), _CHUNK):
        j = min(i + _CHUNK, len(n_a))
        dd, dn = d[: j - i], denom[: j - i]
        na, nb = n_a[i:j], n_b[i:j]
        np.multiply(nb, s_a[i:j], out=dd)
        np.multiply(na, s_b[i:j], out=dn)
        dd -= dn
        dd *= dd
        np.add(na, nb, out=dn)
        dn *= na
        dn *= nb
        np.maximum(dn, 1.0, out=dn)
        dd /= dn
        dd += m2_a[i:j]
        np.add(dd, m2_b[i:j], out=out[i:j])
    return out


def range_extreme(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, fn) -> np.ndarray:
    """min/max of v[lo:hi] per row (NaN when empty) from a sparse table: two overlapping power-of-two blocks."""
    out = np.full(len(lo), np.nan)
    length = hi - lo
    if len(v) == 0 or not length.any():
        return out
    table = [v]
    for k in range(1, int(length.max()).bit_length()):
        prev, h = table[-1], 1 << (k - 1)
        table.append(fn(prev[: len(prev) - h], prev[h:]))
    level = np.zeros(len(lo), dtype=np.int64)
    nonempty = length > 0
    level[nonempty] = np.floor(np.log2(length[nonempty])).astype(np.int64)
    for k in np.unique(level[nonempty]):
        rows = np.flatnonzero(nonempty & (level == k))
        block = table[k]
        out[rows] = fn(block[lo[rows]], block[hi[rows] - (1 << k)])
    return out
