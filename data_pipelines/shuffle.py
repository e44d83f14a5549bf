"""Grain's shuffle, the same permutation, computed a whole epoch at a time.

``grain.MapDataset.shuffle`` draws each index with ``index_shuffle``: a 4-round Simon block
cipher over at least 2^16 values, walked in cycles until it lands in ``[0, n)``. One draw walks
about 2^16 / n steps, so on small datasets it costs milliseconds per sample (2.9 ms with 8
clips, BENCHMARKS.md "Data"). ``EpochShuffle`` gives exactly the indices Grain's shuffle gives
(``tests/test_pipelines.py`` compares them), but computes an epoch's permutation at once: the
cipher over its whole domain in numpy, then the cycle walks by pointer doubling, cached per
epoch (below 2^24 items; above, each index is drawn as Grain draws it, a few steps there).
Same seed, same order, so datasets, checkpointed iterators and golden batches are unaffected.
"""

from __future__ import annotations

import functools
import math

import grain
import numpy as np

_MIN_BLOCK_BITS = 16  # Grain's kMinBlockSize
_ROUNDS = 4  # what grain's ShuffleMapDataset uses
_MAX_TABLE_BITS = 24  # larger sets: Grain's own per-index draw (a few cycle steps each, no table)
_M32 = 0xFFFFFFFF


def _seed_seq_keys(seed: int, n: int) -> list[int]:
    """``std::seed_seq{seed}.generate`` of ``n`` 32-bit words (the C++ standard's algorithm)."""
    b = [0x8B8B8B8B] * n
    s, v = 1, [seed & _M32]
    t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
    p = (n - t) // 2
    q = p + t
    m = max(s + 1, n)

    def tmix(x: int) -> int:
        return (x ^ (x >> 27)) & _M32

    for k in range(m):
        r1 = (1664525 * tmix(b[k % n] ^ b[(k + p) % n] ^ b[(k - 1) % n])) & _M32
        r2 = (r1 + (s if k == 0 else (k % n + v[k - 1] if k <= s else k % n))) & _M32
        b[(k + p) % n] = (b[(k + p) % n] + r1) & _M32
        b[(k + q) % n] = (b[(k + q) % n] + r2) & _M32
        b[k % n] = r2
    for k in range(m, m + n):
        r3 = (1566083941 * tmix((b[k % n] + b[(k + p) % n] + b[(k - 1) % n]) & _M32)) & _M32
        r4 = (r3 - k % n) & _M32
        b[(k + p) % n] ^= r3
        b[(k + q) % n] ^= r4
        b[k % n] = r4
    return b


def _block_bits(max_index: int) -> int:
    bits = math.ceil(math.log2(max_index))
    return max(bits + bits % 2, _MIN_BLOCK_BITS)


def _encrypt_all(seed: int, bits: int) -> np.ndarray:
    """The cipher's image of every value of its 2^bits domain."""
    w = bits // 2
    mask = np.uint64((1 << w) - 1)

    def rotl(x, r):
        return ((x << np.uint64(r)) | (x >> np.uint64(w - r))) & mask

    def f(x):
        return (rotl(x, 1) & rotl(x, 8)) ^ rotl(x, 2)

    v = np.arange(1 << bits, dtype=np.uint64)
    left, right = (v >> np.uint64(w)) & mask, v & mask
    keys = [np.uint64(k) & mask for k in _seed_seq_keys(seed, _ROUNDS)]
    for k1, k2 in zip(keys[0::2], keys[1::2]):
        left ^= f(right) ^ k1
        right ^= f(left) ^ k2
    return ((left << np.uint64(w)) | right).astype(np.int64)


@functools.lru_cache(maxsize=4)
def permutation(seed: int, n: int) -> np.ndarray:
    """``[index_shuffle(i, n - 1, seed, 4) for i in range(n)]``, int64 [n], for sets whose cipher
    domain fits a table (below 2^24 items)."""
    if n <= 1:
        return np.zeros(n, np.int64)
    bits = _block_bits(n - 1)
    if bits > _MAX_TABLE_BITS:
        raise ValueError(f"{n} items: past the table's 2^{_MAX_TABLE_BITS} domain, draw per index")
    enc = _encrypt_all(seed, bits)
    # first[x] = the first of enc(x), enc(enc(x)), ... below n; found by doubling jumps.
    found = enc < n
    first = np.where(found, enc, -1)
    jump = enc.copy()
    while not found[:n].all():
        todo = ~found
        nxt = jump[todo]
        first[todo] = first[nxt]
        found[todo] = found[nxt]
        jump[todo] = jump[nxt]
    out = first[:n]
    if n - 1 >= 1 << bits:  # max_index = 2^bits is outside the domain; the cipher reads its low bits
        from grain._src.python.experimental.index_shuffle.python import index_shuffle_module as ish
        out = np.append(out[: n - 1], ish.index_shuffle(n - 1, max_index=n - 1, seed=seed, rounds=_ROUNDS))
    return out


class EpochShuffle(grain.MapDataset):
    """``parent.shuffle()`` with the same order: the seed is the one Grain's shuffle takes (this
    dataset's default seed, derived from ``parent.seed(...)``), and epoch e (indices e n ..
    e n + n - 1, as ``repeat`` asks for them) is permuted with that seed + e, as Grain does."""

    def __init__(self, parent: grain.MapDataset):
        super().__init__(parent)
        seed = self._default_seed
        if seed is None:
            raise ValueError("EpochShuffle needs a seed: give it with parent.seed(seed)")
        self._seed = int(seed)

    def __len__(self) -> int:
        return len(self._parent)

    def __str__(self) -> str:
        return "EpochShuffle"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        n = len(self._parent)
        epoch, i = divmod(int(index), n)
        seed = (self._seed + epoch) % 2**32
        if n > 1 and _block_bits(n - 1) > _MAX_TABLE_BITS:  # huge sets: Grain's draw is cheap there
            from grain._src.python.experimental.index_shuffle.python import index_shuffle_module as ish
            j = ish.index_shuffle(i, max_index=n - 1, seed=seed, rounds=_ROUNDS)
        else:
            j = permutation(seed, n)[i]
        return self._parent[int(j) + epoch * n]
