"""Nearest-neighbour search over a PatchCore memory bank: exact (faiss flat L2) or approximate (faiss HNSW).

``search="auto"`` picks exact search below :data:`AUTO_EXACT_LIMIT` bank entries and HNSW above it
(the limit is measured by ``benchmarks/bench_knn_scaling.py``; see ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import torch

AUTO_EXACT_LIMIT: int = 200_000
HNSW_M: int = 32
HNSW_EF_SEARCH: int = 64


@dataclass
class NearestNeighbourIndex:
    """A built faiss index over ``bank: [M, D]``; ``search`` returns L2 distances and indices, both ``[N]``."""

    index: faiss.Index
    kind: str

    def search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = np.ascontiguousarray(queries.detach().float().numpy())
        sq_dist, idx = self.index.search(q, 1)
        dist = np.sqrt(np.maximum(sq_dist[:, 0], 0.0))
        return torch.from_numpy(dist), torch.from_numpy(idx[:, 0].astype(np.int64))


def build_index(bank: torch.Tensor, search: str) -> NearestNeighbourIndex:
    """Index ``bank: [M, D]`` for ``search`` in {"exact", "hnsw", "auto"}."""
    data = np.ascontiguousarray(bank.detach().float().numpy())
    kind = search
    if search == "auto":
        kind = "exact" if data.shape[0] <= AUTO_EXACT_LIMIT else "hnsw"
    if kind == "exact":
        index: faiss.Index = faiss.IndexFlatL2(data.shape[1])
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(data.shape[1], HNSW_M)
        index.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise ValueError(f"expected search 'exact', 'hnsw' or 'auto', found {search!r}")
    index.add(data)
    return NearestNeighbourIndex(index, kind)
