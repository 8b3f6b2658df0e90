"""Frequent Directions (Liberty 2013; Ghashami et al. 2016): a streaming sketch of a map too
wide for its ``(C, C)`` covariance.

A sketch of rank ``l`` keeps ``B``, at most ``l`` rows of ``C``, with ``0 <= A^T A - B^T B <=
delta I`` for the (weighted) rows ``A`` streamed so far, where ``delta`` (:attr:`shrinkage`,
tracked exactly) is at most ``||A - A_k||_F^2 / (l - k)`` for every ``k < l``. So the top
eigenvalues satisfy ``0 <= lambda_i(A^T A) - lambda_i(B^T B) <= delta``. Memory is
``O(l C)``; rows are buffered up to ``2 l`` and shrunk back to ``l`` (one float64 eigh of the
``(2l, 2l)`` Gram matrix per ``l`` rows). Sketches merge: stack the rows, shrink again, add
the shrinkages.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor


@contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, one intra-op thread inside, the caller's count back after: these thin
    float64 products (``(2l, C)`` by its transpose) are 4 to 13 times faster on one thread
    than on two on a busy 2-core machine (1,000 rows of 12,544 at rank 16: 0.38 s vs 9.7 s;
    rank 256: 2.3 s vs 4.5 s)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class FrequentDirections:
    """A rank-``rank`` Frequent Directions sketch of ``channels``-wide rows, in float64.

    Args:
        channels: the row width ``C``.
        rank: rows kept after each shrink (``l``); at least 1.
        device: where the buffer lives.
    """

    def __init__(self, channels: int, rank: int, device: torch.device | str = "cpu") -> None:
        if rank < 1:
            raise ValueError(f"sketch rank {rank}: expected >= 1")
        self.rank = rank
        self.buffer = torch.zeros(2 * rank, channels, dtype=torch.float64, device=device)
        self.filled = 0
        #: ``delta``: the sum of the squared singular values subtracted so far.
        self.shrinkage = 0.0

    def add_gram(self, matrix: Tensor, alpha: float) -> None:
        """Stream the ``K`` columns of the ``(C, K)`` ``matrix``, each weighted by ``alpha``
        (so the sketched ``B^T B`` approximates the sum of ``alpha * matrix @ matrix.T``)."""
        self.add_rows(matrix.detach().T, alpha)

    def add_grams(self, terms: Sequence[tuple[Tensor, float]]) -> None:
        """:meth:`add_gram` for every ``(matrix, alpha)`` of ``terms``."""
        for matrix, alpha in terms:
            self.add_gram(matrix, alpha)

    def add_rows(self, rows: Tensor, alpha: float = 1.0) -> None:
        """Stream the rows of ``rows`` ``(K, C)``, each scaled by ``sqrt(alpha)``."""
        scale = alpha**0.5
        start = 0
        with _one_thread(self.buffer.device):
            while start < rows.shape[0]:
                take = min(rows.shape[0] - start, self.buffer.shape[0] - self.filled)
                chunk = self.buffer[self.filled : self.filled + take]
                chunk.copy_(rows[start : start + take]).mul_(scale)
                self.filled += take
                start += take
                if self.filled == self.buffer.shape[0]:
                    self._shrink()

    def merge(self, rows: Tensor, shrinkage: float) -> None:
        """Fold in another sketch's rows ``(l', C)`` and its shrinkage."""
        self.add_rows(rows)
        self.shrinkage += shrinkage

    def sketch(self) -> Tensor:
        """``B``: the ``(rank, C)`` sketch (shrunk now if more than ``rank`` rows are held;
        zero rows where fewer rows were streamed)."""
        if self.filled > self.rank:
            with _one_thread(self.buffer.device):
                self._shrink()
        return self.buffer[: self.rank]

    def _shrink(self) -> None:
        """Keep the top ``rank`` directions, each squared singular value less the
        ``(rank + 1)``-th: ``B <- sqrt(S^2 - delta) V^T`` (through the Gram matrix's eigh)."""
        held = self.buffer[: self.filled]
        values, vectors = torch.linalg.eigh(held @ held.T)  # ascending: B B^T = U S^2 U^T
        values, vectors = values.flip(0).clamp_(min=0), vectors.flip(1)
        delta = values[self.rank].item() if self.filled > self.rank else 0.0
        top = values[: self.rank]
        kept = (top - delta).clamp_(min=0)
        # row i of V^T is u_i^T B / s_i; scale it by sqrt(s_i^2 - delta)
        factor = torch.where(top > 0, (kept / top.clamp(min=1e-300)).sqrt(), torch.zeros_like(top))
        rows = (vectors[:, : self.rank] * factor).T @ held
        self.buffer.zero_()
        self.buffer[: rows.shape[0]] = rows
        self.filled = rows.shape[0]
        self.shrinkage += delta
