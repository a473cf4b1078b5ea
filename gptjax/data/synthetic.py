"""Synthetic token streams with a known entropy rate.

A random order-k Markov chain over an alphabet of A symbols: each of the A**k contexts has its own
next-symbol distribution drawn from a symmetric Dirichlet. Its entropy rate (nats/token) is exact,
so a model's loss on it can be compared with the best any model can do — for tests, and for
checking the irreducible loss a scaling fit reports.
"""

import numpy as np
from scipy.special import xlogy


class MarkovChain:
    """Order-k Markov chain over symbols 0..alphabet_size-1 with random transition rows."""

    def __init__(self, alphabet_size: int, order: int, concentration: float, seed: int):
        self.alphabet_size, self.order = alphabet_size, order
        rng = np.random.default_rng(seed)
        n_contexts = alphabet_size**order
        self.transitions_ZxV = rng.dirichlet(np.full(alphabet_size, concentration), size=n_contexts)
        cdf_ZxV = np.cumsum(self.transitions_ZxV, axis=1)
        cdf_ZxV[:, -1] = 1.0  # guard against rounding leaving the last bin short
        # Row c's CDF shifted into [c, c+1]: one searchsorted over all rows samples every context at
        # once in O(B log(C A)) instead of comparing against B full rows.
        self._shifted_cdf = (cdf_ZxV + np.arange(n_contexts)[:, None]).reshape(-1)
        self.stationary_Z = self._stationary_distribution()

    def _stationary_distribution(self, iterations: int = 10_000, tol: float = 1e-13) -> np.ndarray:
        """Stationary distribution over contexts, by power iteration on the context chain."""
        A, k = self.alphabet_size, self.order
        p_next = self.transitions_ZxV.reshape((A,) * k + (A,))
        pi = np.full((A,) * k, 1.0 / A**k)
        for _ in range(iterations):
            # context (x1..xk) -> (x2..xk, y): sum over the symbol that drops out.
            new = (pi[..., None] * p_next).sum(axis=0)
            if np.abs(new - pi).max() < tol:
                pi = new
                break
            pi = new
        return (pi / pi.sum()).reshape(-1)

    def entropy_rate(self) -> float:
        """H = sum_c pi(c) H(next | c), in nats per token."""
        row_entropy_Z = -xlogy(self.transitions_ZxV, self.transitions_ZxV).sum(axis=1)
        return float(self.stationary_Z @ row_entropy_Z)

    def sample(self, rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
        """(batch, length) int32 sequences started from the stationary distribution."""
        A, k = self.alphabet_size, self.order
        out_BxL = np.empty((batch, length), np.int32)
        context_B = rng.choice(A**k, size=batch, p=self.stationary_Z)
        first_k = np.stack([(context_B // A ** (k - 1 - i)) % A for i in range(k)], axis=1)
        out_BxL[:, : min(k, length)] = first_k[:, :length]
        for t in range(k, length):
            position_B = np.searchsorted(self._shifted_cdf, context_B + rng.random(batch), side="right")
            symbol_B = position_B - context_B * A
            out_BxL[:, t] = symbol_B
            context_B = (context_B * A + symbol_B) % (A**k)
        return out_BxL


class SyntheticBatches:
    """Deterministic batch stream: batch i is a pure function of (seed, split, i).

    The iterator's whole state is the next index, so checkpoints can resume it exactly. Each process
    keeps its own rows of the global batch.
    """

    SPLITS = {"train": 0, "val": 1}

    def __init__(self, chain: MarkovChain, batch_size: int, seq_len: int, seed: int, split: str,
                 process_index: int = 0, process_count: int = 1):
        self.chain, self.batch_size, self.length = chain, batch_size, seq_len + 1  # inputs + shifted targets
        self.seed, self.split_id = seed, self.SPLITS[split]
        rows = batch_size // process_count
        self.rows = slice(process_index * rows, (process_index + 1) * rows)
        self.index = 0

    def batch(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.split_id, index])
        return self.chain.sample(rng, self.batch_size, self.length)[self.rows]

    def __iter__(self):
        return self

    def __next__(self) -> np.ndarray:
        out = self.batch(self.index)
        self.index += 1
        return out

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])
