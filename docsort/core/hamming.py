"""Nearest-neighbour matching of 256-bit binary descriptors with Lowe's ratio test, in one pass.

The near-duplicate verification (:mod:`docsort.core.duplicates`) matches every ORB keypoint of
one page to its nearest descriptor on the other page by Hamming distance, and keeps the match
when it is clearly nearer than the second nearest (Lowe 2004, "Distinctive image features from
scale-invariant keypoints", section 7.1). That search was three quarters of the verification's
time (benchmarks/RESULTS.md, "Near-duplicate families"): ``faiss.hammings`` writes the whole
``n x m`` int32 distance matrix, and numpy then passes over it three more times for the nearest,
the second nearest and the ratio. No library in the stack exposes "the two smallest Hamming
distances of each row" without the matrix (FAISS's k = 2 search keeps a heap a row and is
slower still; OpenCV's ``BFMatcher`` three times slower; measured, same section).

:func:`ratio_matches` does the same arithmetic row by row in a buffer that stays in the L1
cache: the 256 bits as four 64-bit words, ``popcount(a XOR b)`` summed (LLVM's ``ctpop``
intrinsic through a numba ``@intrinsic``, vectorised by LLVM to AVX-512 ``VPOPCNTQ`` where the CPU
has it and to scalar ``POPCNT`` elsewhere), then the smallest, whether it is tied, the smallest
above it, and the ratio. Integer arithmetic: the result is exactly that of the distance matrix
on every CPU. Compiled by numba on first use (about a second; cached on disk where the package
directory is writable).
"""

from __future__ import annotations

import numpy as np

__all__ = ["descriptor_words", "ratio_matches"]

_KERNEL = None


def descriptor_words(descriptors: np.ndarray) -> np.ndarray:
    """256-bit descriptors as four 64-bit words each, one row of words per 64 bits (transposed, so
    the kernel reads each word of consecutive descriptors from contiguous memory).

    Args:
        descriptors: uint8 (n, 32), e.g. the ``d`` field of
            :data:`docsort.core.duplicates.KEYPOINT_DTYPE` (ORB's BRIEF bits).

    Returns:
        uint64 (4, n), C-contiguous, a new array.

    Raises:
        ValueError: when the input is not (n, 32) uint8.
    """
    d = np.asarray(descriptors)
    if d.dtype != np.uint8 or d.ndim != 2 or d.shape[1] != 32:
        raise ValueError(f"descriptors must be uint8 (n, 32), got {d.dtype} {d.shape}")
    return np.ascontiguousarray(np.ascontiguousarray(d).view(np.uint64).reshape(-1, 4).T)


def _kernel():
    """The numba kernel, compiled on first use (numba is imported only here)."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import numba
    from numba import types
    from numba.extending import intrinsic

    @intrinsic
    def popcount64(typingctx, x):  # LLVM's llvm.ctpop.i64
        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])

        return types.uint64(types.uint64), codegen

    @numba.njit(nogil=True, boundscheck=False, cache=True)
    def second(dist, b1):  # pragma: no cover - compiled
        """The second smallest of dist: b1 again when b1 is there twice, else the smallest above it."""
        big = np.int32(1 << 30)
        b2 = big
        ties = 0
        for j in range(dist.shape[0]):
            x = dist[j]
            ties += x == b1
            b2 = min(b2, x if x > b1 else big)
        return b1 if ties > 1 else b2

    @numba.njit(nogil=True, boundscheck=False, cache=True)
    def keep(dist, b1, ratio, i, rows, cols, count):  # pragma: no cover - compiled
        """Row i's match into rows/cols when it passes the ratio test; the new count."""
        if b1 < ratio * second(dist, b1):
            for j in range(dist.shape[0]):
                if dist[j] == b1:
                    rows[count] = i
                    cols[count] = j
                    return count + 1
        return count

    @numba.njit(nogil=True, boundscheck=False, cache=True)
    def kernel(q, r, ratio, rows, cols):  # pragma: no cover - compiled
        n, m = q.shape[1], r.shape[1]
        r0, r1, r2, r3 = r[0], r[1], r[2], r[3]
        dist = np.empty(m, np.int32)
        dist2 = np.empty(m, np.int32)
        big = np.int32(1 << 30)
        count = 0
        for i in range(0, n - 1, 2):
            q0, q1, q2, q3 = q[0, i], q[1, i], q[2, i], q[3, i]
            p0, p1, p2, p3 = q[0, i + 1], q[1, i + 1], q[2, i + 1], q[3, i + 1]
            b1 = big
            c1 = big
            for j in range(m):
                a0, a1, a2, a3 = r0[j], r1[j], r2[j], r3[j]
                x = np.int32(popcount64(q0 ^ a0) + popcount64(q1 ^ a1) + popcount64(q2 ^ a2) + popcount64(q3 ^ a3))
                y = np.int32(popcount64(p0 ^ a0) + popcount64(p1 ^ a1) + popcount64(p2 ^ a2) + popcount64(p3 ^ a3))
                dist[j] = x
                dist2[j] = y
                b1 = min(b1, x)
                c1 = min(c1, y)
            count = keep(dist, b1, ratio, i, rows, cols, count)
            count = keep(dist2, c1, ratio, i + 1, rows, cols, count)
        if n % 2:
            i = n - 1
            q0, q1, q2, q3 = q[0, i], q[1, i], q[2, i], q[3, i]
            b1 = big
            for j in range(m):
                x = np.int32(popcount64(q0 ^ r0[j]) + popcount64(q1 ^ r1[j])
                             + popcount64(q2 ^ r2[j]) + popcount64(q3 ^ r3[j]))
                dist[j] = x
                b1 = min(b1, x)
            count = keep(dist, b1, ratio, i, rows, cols, count)
        return count

    _KERNEL = kernel
    return kernel


def ratio_matches(query: np.ndarray, base: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """The query descriptors whose nearest base descriptor passes Lowe's ratio test, and that one.

    For each query descriptor, the Hamming distances to all base descriptors; the match (query,
    nearest) is kept when ``nearest distance < ratio * second-nearest distance``, the second
    nearest being equal to the nearest when two base descriptors tie (so a tie never passes), and
    the nearest being the first of the base where it is unique. The same as taking all distances
    with ``faiss.hammings`` and the two smallest of each row (a test checks it on real pages).

    Args:
        query: uint64 (4, n) (:func:`descriptor_words`, or columns of it: ``words[:, :k]``).
        base: uint64 (4, m) (:func:`descriptor_words`).
        ratio: Lowe's ratio, in (0, 1].

    Returns:
        ``(rows, cols)``: int64 (k,) query indices in increasing order and their nearest base
        indices, ``k <= n``; empty when nothing passes. With a single base descriptor there is no
        second nearest, and every query descriptor passes.

    Raises:
        ValueError: when an array is not (4, ·) uint64.
    """
    q, b = np.asarray(query), np.asarray(base)
    for name, a in (("query", q), ("base", b)):
        if a.dtype != np.uint64 or a.ndim != 2 or a.shape[0] != 4:
            raise ValueError(f"{name} must be uint64 (4, n), got {a.dtype} {a.shape}")
    rows = np.empty(q.shape[1], np.int64)
    cols = np.empty(q.shape[1], np.int64)
    if not q.shape[1] or not b.shape[1]:
        return rows[:0], cols[:0]
    k = _kernel()(q, np.ascontiguousarray(b), float(ratio), rows, cols)
    return rows[:k], cols[:k]
