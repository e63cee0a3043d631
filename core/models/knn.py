"""Nearest-neighbour search over a PatchCore memory bank: exact (blocked matrix products) or approximate (HNSW).

Exact search computes ``|b|^2 - 2 q.b`` (then adds ``|q|^2``) for blocks of 1,024 queries x 4,096 bank entries,
so memory stays bounded whatever the bank size; it is anomalib's own formula (``PatchcoreModel.euclidean_dist``)
without materialising the full ``[N, M]`` matrix. PatchCore needs the neighbour's index only for each image's
maximum patch (anomalib's score re-weighting), so :meth:`NearestNeighbourIndex.patch_search` takes every other
patch's distance from :func:`nearest_distances`: one matrix product per 4,096 entries against the bank stored as
``[-2 b, |b|^2]`` (the bias folded into the product) and a min without indices (several times cheaper than a min with
indices): ~1.3 ms per 1,000 entries per image in ``benchmarks/bench_knn_scaling.py``.
On CPUs whose bf16 matrix products are fast (AMX), ``precision="bf16"`` screens the distances with one bf16
product (:func:`screened_sq_distances`: the bank centred and split into high and low bf16 parts, so the error comes
from the bf16 *output* rounding, with a rigorous bound per query) and then searches exactly, in fp32, every patch
that could be its image's maximum (its upper bound reaches the largest lower bound): the image's maximum patch,
its neighbour and the re-weighted image score are those of the fp32 search; the other patches' distances (the map)
are within the stated bound (~0.2-0.5% relative). ``precision="auto"`` (what :func:`build_index` is given by
PatchCore) times both on the first real searches (the model's own patches: how many the screen must re-check
depends on them) and keeps the faster: never assumed (benchmarks/RESULTS.md, cpu_speed). An earlier choice timed
at index build on the bank's entries plus noise, whose maxima do not stand out as real images' do, so the screen
re-checked many patches there and fp32 was kept where bf16 was faster on the real patches.
HNSW (faiss) trades exactness for speed on very large banks. A missed neighbour can only make a patch look
*more* anomalous (HNSW returns the distance to some real bank entry, never less than the nearest one), and the
image score is the maximum patch, so :meth:`NearestNeighbourIndex.exact_maximum` re-checks patches exactly in
decreasing order of their approximate distance until the next approximate value is below the best exact one:
the image's maximum patch, its neighbour and hence anomalib's re-weighted image score are then exact, at the
cost of a few small exact searches. ``search="auto"`` picks exact search up to :data:`AUTO_EXACT_LIMIT` bank
entries and HNSW above (both measured by ``benchmarks/bench_knn_real.py``).

Leave-one-image-out search (calibration on the training images themselves): a bank whose entries are grouped by
the training image they came from skips one contiguous range ``[lo, hi)`` of entries. Exact search runs over the
two remaining slices (views, no copy); HNSW search skips the range with a faiss ID selector, and the image's
maximum patch is re-checked exactly over the same slices, as for ordinary HNSW search.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch

log = logging.getLogger(__name__)

# Measured on real magnetic_tile features (benchmarks/bench_knn_real.py, RESULTS.md "knn_real"): exact search
# costs ~1.9 ms per 1,000 entries per image; HNSW at efSearch 16 + exact maximum ~20-140 ms from 30k to 779k
# entries with the same image AUROC. They cross near 12k entries.
AUTO_EXACT_LIMIT: int = 16_384
HNSW_M: int = 32
HNSW_EF_SEARCH: int = 16
REFINE_BLOCK: int = 64
QUERY_BLOCK: int = 1024
BANK_BLOCK: int = 4096
DISTANCE_BANK_BLOCK: int = 4096
SEARCHES: tuple[str, ...] = ("exact", "hnsw", "auto")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "auto")
BF16_UNIT = 2.0 ** -8  # unit roundoff of bfloat16 (8 significant bits)
FP32_UNIT = 2.0 ** -24
BF16_MIN_BANK = 1024  # below this the product is too small for bf16 to pay for its extra steps: not timed
AUTO_TRIALS = 3  # precision "auto": real searches timed both ways before the faster is kept


def exact_search(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor | None = None,
                 query_block: int = QUERY_BLOCK, bank_block: int = BANK_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest bank entry for each query: L2 distances ``[N]`` and indices ``[N]`` (``queries: [N, D]``, ``bank: [M, D]``)."""
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"expected queries [N, D] and bank [M, D], found {tuple(queries.shape)} and {tuple(bank.shape)}")
    with torch.inference_mode():
        q_all = queries.float()
        b_all = bank.float()
        b_sq = (b_all * b_all).sum(dim=1) if bank_sq is None else bank_sq
        dist = torch.empty(q_all.shape[0])
        index = torch.empty(q_all.shape[0], dtype=torch.int64)
        for qs in range(0, q_all.shape[0], query_block):
            q = q_all[qs:qs + query_block]
            best_v: torch.Tensor | None = None
            best_i = torch.zeros(q.shape[0], dtype=torch.int64)
            for bs in range(0, b_all.shape[0], bank_block):
                d = torch.addmm(b_sq[bs:bs + bank_block][None], q, b_all[bs:bs + bank_block].T, alpha=-2.0)
                v, i = d.min(dim=1)
                if best_v is None:
                    best_v, best_i = v, i
                else:
                    better = v < best_v
                    best_v = torch.where(better, v, best_v)
                    best_i = torch.where(better, i + bs, best_i)
            assert best_v is not None
            dist[qs:qs + query_block] = (best_v + (q * q).sum(dim=1)).clamp_min_(0).sqrt_()
            index[qs:qs + query_block] = best_i
        return dist, index


def augment_bank(bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """``[-2 b, |b|^2]``: ``[M, D+1]`` for ``bank: [M, D]``, so that ``[q, 1] . row = |b|^2 - 2 q.b``."""
    return torch.cat([-2.0 * bank.float(), bank_sq.float()[:, None]], dim=1).contiguous()


def nearest_distances(queries: torch.Tensor, augmented: torch.Tensor, query_block: int = QUERY_BLOCK,
                      bank_block: int = DISTANCE_BANK_BLOCK) -> torch.Tensor:
    """L2 distance from each query to its nearest bank entry: ``[N]`` for ``queries: [N, D]`` and the bank as
    :func:`augment_bank` stores it (``augmented: [M, D+1]``). No indices (see :func:`exact_search` for those)."""
    if queries.ndim != 2 or augmented.ndim != 2 or queries.shape[1] + 1 != augmented.shape[1]:
        raise ValueError(f"expected queries [N, D] and an augmented bank [M, D+1], found {tuple(queries.shape)} "
                         f"and {tuple(augmented.shape)}")
    with torch.inference_mode():
        q_all = torch.cat([queries.float(), torch.ones(queries.shape[0], 1)], dim=1)
        dist = torch.empty(q_all.shape[0])
        # One reused buffer for the distance blocks: fresh 1,024 x 8,192 blocks (32 MB each, page faults every
        # time) made bench_knn_scaling ~2x slower on 100k+ banks (232 vs 121 ms per image at 100k).
        buffer = torch.empty(min(query_block, q_all.shape[0]) * min(bank_block, augmented.shape[0]))
        for qs in range(0, q_all.shape[0], query_block):
            q = q_all[qs:qs + query_block]
            best: torch.Tensor | None = None
            for bs in range(0, augmented.shape[0], bank_block):
                block = augmented[bs:bs + bank_block]
                products = torch.mm(q, block.T, out=buffer[:q.shape[0] * block.shape[0]].view(q.shape[0], -1))
                v = products.amin(dim=1)
                best = v if best is None else torch.minimum(best, v)
            assert best is not None
            q_sq = (q[:, :-1] * q[:, :-1]).sum(dim=1)
            dist[qs:qs + query_block] = (best + q_sq).clamp_min_(0).sqrt_()
        return dist


@dataclass(frozen=True)
class Bf16Bank:
    """The bank for :func:`screened_sq_distances`: ``mean: [D]`` (subtracted from bank and queries: distances are
    unchanged, the products' magnitudes smaller), ``split_t: [3(D+2), M]`` bf16, the rows ``[hi; lo; hi]`` of
    ``b' = [-2 (b - mean), |b - mean|^2, 1]`` (hi = bf16(b'), lo = bf16(b' - hi)), and ``max_norm`` = max |b - mean|."""

    mean: torch.Tensor
    split_t: torch.Tensor
    max_norm: float


def bf16_bank(bank: torch.Tensor) -> Bf16Bank:
    """:class:`Bf16Bank` of ``bank: [M, D]``."""
    data = bank.detach().float()
    mean = data.mean(dim=0)
    centred = data - mean
    sq = (centred * centred).sum(dim=1, keepdim=True)
    full = torch.cat([-2.0 * centred, sq, torch.ones_like(sq)], dim=1)
    hi = full.bfloat16()
    lo = (full - hi.float()).bfloat16()
    return Bf16Bank(mean, torch.cat([hi, lo, hi], dim=1).T.contiguous(), float(centred.norm(dim=1).max()))


def screened_sq_distances(queries: torch.Tensor, packed: Bf16Bank,
                          query_block: int = QUERY_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared L2 distance from each query to its nearest bank entry by one bf16 product per block, and a bound on
    its error: ``(approx [N], bound [N])`` with ``|approx - exact| <= bound`` (``queries: [N, D]``).

    ``q' = [q - mean, 1, |q - mean|^2]`` split as the bank is (``[hi, hi, lo]`` against ``[hi; lo; hi]``), so
    ``q'.b'`` is the squared distance up to the split's ``~3 u^2`` and fp32 accumulation, both below
    ``gamma = 4 u^2 + 2 K u_32`` times ``sum |q'_k b'_k| <= (|q - mean| + max_norm)^2``; the product's output is
    rounded to bf16 (``u`` of its value). Doubled for safety; tests/test_runtime.py checks it against float64.
    """
    if queries.ndim != 2 or queries.shape[1] + 2 != packed.split_t.shape[0] // 3:
        raise ValueError(f"expected queries [N, {packed.split_t.shape[0] // 3 - 2}], found {tuple(queries.shape)}")
    u = BF16_UNIT
    gamma = 4 * u * u + 2 * packed.split_t.shape[0] * FP32_UNIT
    with torch.inference_mode():
        centred = queries.float() - packed.mean
        sq = (centred * centred).sum(dim=1, keepdim=True)
        full = torch.cat([centred, torch.ones_like(sq), sq], dim=1)
        hi = full.bfloat16()
        lo = (full - hi.float()).bfloat16()
        split = torch.cat([hi, hi, lo], dim=1)
        approx = torch.empty(queries.shape[0])
        for qs in range(0, split.shape[0], query_block):
            approx[qs:qs + query_block] = (split[qs:qs + query_block] @ packed.split_t).amin(dim=1).float()
        reach = gamma * (sq[:, 0].sqrt() + packed.max_norm) ** 2
        bound = 2.0 * (reach + u * (approx.abs() + reach)) * (1 + 4 * u)
        return approx, bound


@dataclass
class NearestNeighbourIndex:
    """A search structure over ``bank: [M, D]``; ``search(queries: [N, D])`` returns L2 distances and indices ``[N]``."""

    bank: torch.Tensor
    kind: str
    hnsw: faiss.Index | None = None
    bank_sq: torch.Tensor | None = None
    augmented: torch.Tensor | None = None
    ef_search: int = HNSW_EF_SEARCH  # HNSW's search breadth (also for leave-one-out search)
    precision: str = "fp32"  # exact search's screening: "fp32", "bf16" or "auto" (decided by the first searches)
    packed: Bf16Bank | None = None
    trials: dict[str, list[float]] = field(default_factory=dict)  # precision "auto": seconds per real search

    def patch_search(self, queries: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """PatchCore's search for ``groups`` images of n patches each (``queries: [G*n, D]``): distances ``[G*n]``
        to the nearest bank entry, and neighbour indices ``[G*n]`` that are valid at least at each image's
        largest distance (elsewhere 0 for exact search). Both are exact there; elsewhere HNSW may over-estimate."""
        if self.hnsw is not None:
            return self.exact_maximum(queries, *self.search(queries), groups)
        if self.augmented is None:
            self.augmented = augment_bank(self.bank, self.bank_sq if self.bank_sq is not None
                                          else (self.bank * self.bank).sum(dim=1))
        if self.precision == "auto":
            return self._timed_patch_search(queries, groups)
        if self.precision == "bf16":
            return self._screened_patch_search(queries, groups)
        return self._fp32_patch_search(queries, groups)

    def _fp32_patch_search(self, queries: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.augmented is not None
        dist = nearest_distances(queries, self.augmented)
        rows = dist.view(groups, -1).argmax(dim=1) + torch.arange(groups) * (dist.numel() // groups)
        _, row_index = exact_search(queries[rows], self.bank, self.bank_sq)
        index = torch.zeros(dist.numel(), dtype=torch.int64)
        index[rows] = row_index
        return dist, index

    def _timed_patch_search(self, queries: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Precision "auto": search these (real) patches both ways, in turns, timing each, and after
        :data:`AUTO_TRIALS` searches keep the faster for good (the fp32 result is returned meanwhile). Timed on the
        patches the model really sees: how many patches the bf16 screen must re-check exactly (its cost beyond the
        product) depends on how far each image's maximum stands out, which made-up queries do not tell."""
        if self.packed is None:
            self.packed = bf16_bank(self.bank)
        order = (("bf16", self._screened_patch_search), ("fp32", self._fp32_patch_search))
        if len(self.trials.get("fp32", ())) % 2:  # alternate which goes first
            order = order[::-1]
        result: tuple[torch.Tensor, torch.Tensor] | None = None
        for name, search in order:
            t0 = time.perf_counter()
            out = search(queries, groups)
            self.trials.setdefault(name, []).append(time.perf_counter() - t0)
            if name == "fp32":
                result = out
        assert result is not None
        if min(len(v) for v in self.trials.values()) >= AUTO_TRIALS and self.precision == "auto":
            best = {name: min(values) for name, values in self.trials.items()}
            self.precision = "bf16" if best["bf16"] < best["fp32"] else "fp32"
            if self.precision == "fp32":
                self.packed = None
            log.info("bank search precision %s (best of %d real searches: bf16 %.1f ms, fp32 %.1f ms)",
                     self.precision, AUTO_TRIALS, best["bf16"] * 1e3, best["fp32"] * 1e3)
        return result

    def _screened_patch_search(self, queries: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`patch_search` screened in bf16: every patch whose upper bound reaches its image's largest lower
        bound is searched exactly in fp32 (its distance and neighbour), so each image's maximum is exact."""
        packed = self.packed  # read once: another thread's "auto" trial may drop it (fp32 won) meanwhile
        if packed is None:
            packed = bf16_bank(self.bank)
            if self.precision != "fp32":
                self.packed = packed
        assert self.augmented is not None
        approx, bound = screened_sq_distances(queries, packed)
        low = (approx - bound).clamp_min(0).sqrt().view(groups, -1)
        high = (approx + bound).clamp_min(0).sqrt().view(groups, -1)
        dist = approx.clamp_min(0).sqrt()
        rows = torch.nonzero((high >= low.amax(dim=1, keepdim=True)).reshape(-1))[:, 0]
        index = torch.zeros(dist.numel(), dtype=torch.int64)
        dist[rows], index[rows] = exact_search(queries[rows], self.bank, self.bank_sq)  # distance and neighbour at once
        return dist, index

    def search(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.hnsw is None:
            return exact_search(queries, self.bank, self.bank_sq)
        q = np.ascontiguousarray(queries.detach().float().numpy())
        sq_dist, idx = self.hnsw.search(q, 1)
        dist = np.sqrt(np.maximum(sq_dist[:, 0], 0.0))
        return torch.from_numpy(dist), torch.from_numpy(idx[:, 0].astype(np.int64))

    def leave_out_search(self, queries: torch.Tensor, skip: tuple[int, int],
                         groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`patch_search` for ONE image's patches (``queries: [G*n, D]``: ``groups`` = G of its tiles of n
        patches each, or the whole image with G = 1) against the bank without entries ``skip = (lo, hi)`` (that
        image's own, see :func:`kept_ranges`): distances ``[G*n]`` and indices ``[G*n]`` into the whole bank, exact
        at each group's largest distance (elsewhere 0 for exact search; HNSW may over-estimate).

        Raises:
            ValueError: the range leaves no bank entry to compare with.
        """
        ranges = kept_ranges(int(self.bank.shape[0]), skip)
        if not ranges:
            raise ValueError(f"expected bank entries outside {skip} to search, found none of {self.bank.shape[0]}")
        bank_sq = self.bank_sq if self.bank_sq is not None else (self.bank * self.bank).sum(dim=1)

        def exact(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return exact_search_ranges(q, self.bank, bank_sq, ranges)

        if self.hnsw is not None:
            q = np.ascontiguousarray(queries.detach().float().numpy())
            params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from faiss's stubs
            inner = faiss.IDSelectorRange(int(skip[0]), int(skip[1]))
            params.sel = faiss.IDSelectorNot(inner)
            params.efSearch = self.ef_search
            sq_dist, idx = self.hnsw.search(q, 1, params=params)
            found = idx[:, 0] >= 0
            dist = torch.from_numpy(np.sqrt(np.maximum(sq_dist[:, 0], 0.0)).astype(np.float32))
            index = torch.from_numpy(idx[:, 0].astype(np.int64))
            if not found.all():  # a graph cut off by the selector: those patches exactly
                rows = torch.from_numpy(np.flatnonzero(~found))
                dist[rows], index[rows] = exact(queries[rows])
            return self.exact_maximum(queries, dist, index, groups, exact)
        if self.augmented is None:
            self.augmented = augment_bank(self.bank, bank_sq)
        augmented = self.augmented
        dist = torch.stack([nearest_distances(queries, augmented[a:b]) for a, b in ranges]).amin(dim=0)
        rows = dist.view(groups, -1).argmax(dim=1) + torch.arange(groups) * (dist.numel() // groups)
        index = torch.zeros(dist.numel(), dtype=torch.int64)
        index[rows] = exact(queries[rows])[1]
        return dist, index

    def exact_maximum(self, queries: torch.Tensor, dist: torch.Tensor, index: torch.Tensor, groups: int,
                      exact: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Make each group's largest distance exact (``queries: [G*n, D]``, ``dist``/``index``: ``[G*n]`` from
        :meth:`search`, ``groups`` = images; ``exact``: the exact search to refine with, by default over the
        whole bank). Exact search has nothing to refine and returns its inputs."""
        if self.hnsw is None:
            return dist, index
        if exact is None:
            def exact(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return exact_search(q, self.bank, self.bank_sq)
        dist, index = dist.clone(), index.clone()
        d, i, q = dist.view(groups, -1), index.view(groups, -1), queries.view(groups, -1, queries.shape[-1])
        for g in range(groups):
            order = torch.argsort(d[g], descending=True)
            best = -float("inf")
            for start in range(0, order.numel(), REFINE_BLOCK):
                chunk = order[start:start + REFINE_BLOCK]
                if float(d[g, chunk[0]]) < best:
                    break  # every remaining patch is below ``best`` even before refinement
                exact_d, exact_i = exact(q[g, chunk])
                d[g, chunk], i[g, chunk] = exact_d, exact_i
                best = max(best, float(exact_d.max()))
        return dist, index


def kept_ranges(size: int, skip: tuple[int, int]) -> list[tuple[int, int]]:
    """The non-empty ranges of ``range(size)`` left when ``[lo, hi)`` = ``skip`` is taken out."""
    lo, hi = max(0, int(skip[0])), min(size, int(skip[1]))
    if hi <= lo:
        return [(0, size)] if size > 0 else []
    return [(a, b) for a, b in ((0, lo), (hi, size)) if b > a]


def exact_search_ranges(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor,
                        ranges: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`exact_search` over the bank rows in ``ranges`` only (``[(a, b), ...]``, slices of ``bank: [M, D]``):
    distances ``[N]`` and indices ``[N]`` into the whole bank."""
    best_d: torch.Tensor | None = None
    best_i = torch.zeros(queries.shape[0], dtype=torch.int64)
    for a, b in ranges:
        d, i = exact_search(queries, bank[a:b], bank_sq[a:b])
        if best_d is None:
            best_d, best_i = d, i + a
        else:
            better = d < best_d
            best_d, best_i = torch.where(better, d, best_d), torch.where(better, i + a, best_i)
    if best_d is None:
        raise ValueError("expected at least one range of bank entries to search, found none")
    return best_d, best_i


def resolve(search: str, bank_size: int) -> str:
    """The search ``"auto"`` stands for at ``bank_size`` entries (others unchanged)."""
    if search not in SEARCHES:
        raise ValueError(f"expected search in {SEARCHES}, found {search!r}")
    if search == "auto":
        return "exact" if bank_size <= AUTO_EXACT_LIMIT else "hnsw"
    return search


def build_index(bank: torch.Tensor, search: str, ef_search: int = HNSW_EF_SEARCH,
                precision: str = "fp32") -> NearestNeighbourIndex:
    """Index ``bank: [M, D]`` for ``search`` in {"exact", "hnsw", "auto"}; ``ef_search`` tunes HNSW's recall;
    ``precision`` ("fp32", "bf16" or "auto": both timed on the first :data:`AUTO_TRIALS` real searches, then the
    faster kept; fp32 below :data:`BF16_MIN_BANK` entries) the exact search's screening."""
    if precision not in PRECISIONS:
        raise ValueError(f"expected precision in {PRECISIONS}, found {precision!r}")
    data = bank.detach().float().contiguous()
    method = resolve(search, int(data.shape[0]))
    bank_sq = (data * data).sum(dim=1)
    if method == "exact":
        exact = NearestNeighbourIndex(data, method, bank_sq=bank_sq, augmented=augment_bank(data, bank_sq))
        if precision == "auto" and data.shape[0] < BF16_MIN_BANK:
            precision = "fp32"
        if precision in ("bf16", "auto"):  # "auto": decided by timing the first real searches
            exact.precision, exact.packed = precision, bf16_bank(data)
        return exact
    index = faiss.IndexHNSWFlat(int(data.shape[1]), HNSW_M)
    index.hnsw.efSearch = int(ef_search)
    index.add(np.ascontiguousarray(data.numpy()))
    return NearestNeighbourIndex(data, method, hnsw=index, bank_sq=bank_sq, ef_search=int(ef_search))
