"""The fast greedy coreset: same picks as a plain Gonzalez greedy, no autograd, sane edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.models.coreset import coreset_size, kcenter_greedy


def reference_greedy(x: np.ndarray, k: int, first: int) -> list[int]:
    """Textbook farthest-point (Gonzalez) greedy in float64."""
    picks = [first]
    dist = np.linalg.norm(x - x[first], axis=1)
    for _ in range(k - 1):
        nxt = int(np.argmax(dist))
        picks.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(x - x[nxt], axis=1))
    return picks


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_without_projection(seed: int) -> None:
    x = torch.randn(400, 12, generator=torch.Generator().manual_seed(seed))
    picks = kcenter_greedy(x, 25, projection_dim=0, seed=seed)
    assert picks.tolist() == reference_greedy(x.double().numpy(), 25, int(picks[0]))


def test_one_centre_per_cluster_with_projection() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 200, generator=gen) * 50
    x = torch.cat([c + torch.randn(300, 200, generator=gen) for c in centres])
    picks = kcenter_greedy(x, 6, projection_dim=32, seed=0)
    assert sorted({int(p) // 300 for p in picks}) == list(range(6))


def test_points_on_a_line() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [20.0]])
    picks = kcenter_greedy(x, 3, projection_dim=0, seed=0)
    first = int(picks[0])
    assert picks.tolist() == reference_greedy(x.numpy(), 3, first)
    assert len(set(picks.tolist())) == 3


def test_no_autograd_and_deterministic() -> None:
    x = torch.randn(300, 16, requires_grad=True)
    a = kcenter_greedy(x, 10, projection_dim=8, seed=5)
    b = kcenter_greedy(x, 10, projection_dim=8, seed=5)
    assert not a.requires_grad and a.dtype == torch.long
    assert torch.equal(a, b) and len(set(a.tolist())) == 10


@pytest.mark.parametrize(("n", "ratio", "expected"), [(1000, 0.01, 10), (1000, 1.0, 1000), (10, 0.001, 1), (7, 0.5, 4)])
def test_coreset_size(n: int, ratio: float, expected: int) -> None:
    assert coreset_size(n, ratio) == expected


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_bad_ratio(ratio: float) -> None:
    with pytest.raises(ValueError, match="coreset ratio"):
        coreset_size(100, ratio)


def test_bad_k() -> None:
    with pytest.raises(ValueError, match="k="):
        kcenter_greedy(torch.randn(5, 2), 6)
