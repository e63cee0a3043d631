"""Fast inference path == stock path: ONNX Runtime graphs, blocked exact search, matrix map smoothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomalib.models.image.patchcore.anomaly_map import AnomalyMapGenerator

from core.models.efficientad import EfficientAD, EfficientADConfig
from core.models.knn import (
    AUTO_EXACT_LIMIT,
    augment_bank,
    build_index,
    exact_search,
    nearest_distances,
    resolve,
)
from core.models.mapsmooth import MapSmoother, axis_operator
from core.models.patchcore import PatchCore, PatchCoreConfig
from core.models.runtime import check_runtime
from core.store import lifecycle as det
from tests.conftest import PATCHCORE_TEST_SETTINGS


@pytest.mark.parametrize(
    ("bank", "queries", "distances", "indices"),
    [
        ([[0.0], [3.0], [10.0]], [[1.0], [4.0], [9.0], [-2.0]], [1.0, 1.0, 1.0, 2.0], [0, 1, 2, 0]),
        ([[0.0, 0.0], [3.0, 4.0]], [[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]], [0.0, 1.0, 5.0], [1, 0, 1]),
        ([[1.0, 1.0], [1.0, 1.0], [5.0, 5.0]], [[1.0, 2.0]], [1.0], [0]),
    ],
)
@pytest.mark.parametrize("blocks", [(1, 1), (2, 2), (1024, 4096)])
def test_exact_search_hand_computed(bank: list, queries: list, distances: list, indices: list,
                                    blocks: tuple[int, int]) -> None:
    dist, idx = exact_search(torch.tensor(queries), torch.tensor(bank), query_block=blocks[0], bank_block=blocks[1])
    assert torch.allclose(dist, torch.tensor(distances), atol=1e-5)
    assert idx.tolist() == indices


@pytest.mark.parametrize(("n_bank", "n_query", "blocks"), [(50, 33, (8, 7)), (5000, 300, (128, 1000)), (3, 1, (1, 1))])
def test_exact_search_matches_brute_force(n_bank: int, n_query: int, blocks: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(n_bank)
    bank, queries = torch.randn(n_bank, 24, generator=gen), torch.randn(n_query, 24, generator=gen)
    ref = torch.cdist(queries.double(), bank.double())
    dist, idx = exact_search(queries, bank, query_block=blocks[0], bank_block=blocks[1])
    assert torch.allclose(dist.double(), ref.min(dim=1).values, rtol=1e-4, atol=1e-4)
    assert torch.allclose(ref.gather(1, idx[:, None])[:, 0], ref.min(dim=1).values, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("bank", "queries", "distances"),
    [
        ([[0.0], [3.0], [10.0]], [[1.0], [4.0], [9.0], [-2.0]], [1.0, 1.0, 1.0, 2.0]),
        ([[0.0, 0.0], [3.0, 4.0]], [[3.0, 4.0], [0.0, 1.0], [6.0, 8.0]], [0.0, 1.0, 5.0]),
        ([[1.0, 1.0], [1.0, 1.0], [5.0, 5.0]], [[1.0, 2.0]], [1.0]),
    ],
)
@pytest.mark.parametrize("blocks", [(1, 1), (2, 2), (1024, 8192)])
def test_nearest_distances_hand_computed(bank: list, queries: list, distances: list, blocks: tuple[int, int]) -> None:
    b = torch.tensor(bank)
    dist = nearest_distances(torch.tensor(queries), augment_bank(b, (b * b).sum(dim=1)), *blocks)
    assert torch.allclose(dist, torch.tensor(distances), atol=1e-5)


def test_nearest_distances_checks_shapes() -> None:
    with pytest.raises(ValueError, match=r"expected queries \[N, D\] and an augmented bank \[M, D\+1\], found \(2, 3\)"):
        nearest_distances(torch.zeros(2, 3), torch.zeros(5, 3))


@pytest.mark.parametrize(("n_bank", "groups", "patches"), [(9000, 2, 400), (40, 3, 7), (1, 1, 5)])
def test_patch_search_is_exact_search_at_each_image_maximum(n_bank: int, groups: int, patches: int) -> None:
    gen = torch.Generator().manual_seed(n_bank)
    bank, queries = torch.randn(n_bank, 24, generator=gen), torch.randn(groups * patches, 24, generator=gen)
    exact_d, exact_i = exact_search(queries, bank)
    d, i = build_index(bank, "exact").patch_search(queries, groups)
    assert torch.allclose(d, exact_d, rtol=1e-4, atol=1e-4)  # 9,000 entries: two bank blocks of 8,192
    rows = d.view(groups, -1).argmax(dim=1) + torch.arange(groups) * patches
    assert torch.equal(i[rows], exact_i[rows])
    assert int(i.count_nonzero()) <= groups  # other indices are not computed


@pytest.mark.parametrize(("search", "size", "expected"),
                         [("auto", 10, "exact"), ("auto", AUTO_EXACT_LIMIT, "exact"), ("auto", AUTO_EXACT_LIMIT + 1, "hnsw"),
                          ("exact", 10 ** 7, "exact"), ("hnsw", 5, "hnsw")])
def test_auto_search_switches_at_the_measured_limit(search: str, size: int, expected: str) -> None:
    assert resolve(search, size) == expected


def test_unknown_search_and_runtime_are_named() -> None:
    with pytest.raises(ValueError, match="expected search in .* found 'fastest'"):
        build_index(torch.zeros(3, 2), "fastest")
    with pytest.raises(ValueError, match="expected runtime in .* found 'tensorrt'"):
        check_runtime("tensorrt")
    with pytest.raises(ValueError, match="expected inference path"):
        det.inference_settings("patchcore", {}, "turbo")


@pytest.mark.parametrize(("n_in", "n_out", "kernel", "row0"),
                         # nearest 2 -> 4 gives [a, a, b, b]; reflect pad 1: [a, a, a, b, b, b]; box [1, 1, 1]/3
                         [(2, 4, [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0]),
                          (2, 4, [0.0, 1.0, 0.0], [1.0, 0.0])])
def test_axis_operator_hand_computed(n_in: int, n_out: int, kernel: list, row0: list) -> None:
    op = axis_operator(n_in, n_out, torch.tensor(kernel, dtype=torch.float64), "reflect")
    assert op.shape == (n_out, n_in)
    assert torch.allclose(op[0], torch.tensor(row0, dtype=torch.float64))
    assert torch.allclose(op.sum(dim=1), torch.ones(n_out, dtype=torch.float64))  # a blur keeps constants
    if kernel[0] > 0:  # second output sees [a, a, b] -> (2a + b) / 3
        assert torch.allclose(op[1], torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))


@pytest.mark.parametrize(("grid", "size", "sigma"), [((32, 32), (256, 256), 4), ((30, 41), (240, 328), 4),
                                                     ((8, 8), (64, 64), 4), ((7, 5), (56, 40), 2)])
def test_matrix_smoothing_equals_anomalib_map(grid: tuple[int, int], size: tuple[int, int], sigma: int) -> None:
    generator = AnomalyMapGenerator(sigma=sigma)
    scores = torch.rand(2, 1, *grid, generator=torch.Generator().manual_seed(1)) * 10
    with torch.inference_mode():
        ref = generator(scores, size)
        fast = MapSmoother(generator)(scores, size)
    assert fast.shape == ref.shape == (2, 1, *size)
    assert torch.allclose(fast, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 96, 64)])
def test_onnx_embedding_equals_torch(shape: tuple[int, ...]) -> None:
    fast = PatchCore(PatchCoreConfig.from_dict(PATCHCORE_TEST_SETTINGS))
    ref = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "runtime": "torch"}))
    batch = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    a, b = fast.embed(batch), ref.embed(batch)
    assert a.shape == b.shape == (shape[0], 152, shape[2] // 8, shape[3] // 8)
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3)
    assert not torch.equal(a, fast.embed(batch * 0.5))  # the graph really depends on its input


def test_onnx_efficientad_equals_torch() -> None:
    fast = EfficientAD(EfficientADConfig(steps=1))
    ref = EfficientAD(EfficientADConfig(steps=1, runtime="torch"))
    ref.load_state(fast.state())
    with torch.no_grad():  # make the maps non-trivial: a student that differs from zero
        for p in fast.model.student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ref.load_state(fast.state())
    batch = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    (sa, ma), (sb, mb) = fast.forward(batch), ref.forward(batch)
    assert ma.shape == mb.shape == (2, 256, 256)
    assert torch.allclose(sa, sb, rtol=1e-4, atol=1e-6)
    assert torch.allclose(ma, mb, rtol=1e-4, atol=1e-5)
    assert float(ma.std()) > 0


@pytest.mark.parametrize(("kind", "inference", "expected"),
                         [("patchcore", "stock", {"runtime": "torch", "search": "stock"}),
                          ("patchcore", "fast", {"runtime": "auto", "search": "auto"}),
                          ("efficientad", "stock", {"runtime": "torch"}),
                          ("efficientad", "fast", {"runtime": "auto"})])
def test_inference_path_settings(kind: str, inference: str, expected: dict) -> None:
    saved = {"search": "stock", "runtime": "onnx", "steps": 3} if kind == "patchcore" else {"steps": 3}
    out = det.inference_settings(kind, saved, inference)
    assert {k: out[k] for k in expected} == expected
    assert out["steps"] == 3


def test_fast_and_stock_paths_agree_on_a_saved_model(trained_store, demo_root) -> None:
    from core.data.dataset import load_category
    from core.data.imageio import load_image
    from core.store.model_store import ModelStore

    store = ModelStore(trained_store)
    images = [load_image(s.path) for s in load_category(demo_root, "demo_metal").test[:3]]
    for kind in det.KINDS:
        fast = det.load(store.current("demo_metal", kind), "fast").detector
        stock = det.load(store.current("demo_metal", kind), "stock").detector
        assert fast.config.runtime == "auto" and stock.config.runtime == "torch"
        if kind == "patchcore":  # loaded ready to score: the search index is built by load, not by the first image
            assert fast._index is not None and fast._index.kind == "exact" and stock._index is None
        for a, b in zip(fast.predict(images), stock.predict(images), strict=True):
            assert a.score == pytest.approx(b.score, rel=1e-4, abs=1e-6)
            assert np.allclose(a.anomaly_map, b.anomaly_map, rtol=1e-3, atol=1e-4 * max(1.0, float(np.ptp(b.anomaly_map))))


def test_hnsw_exact_maximum_makes_each_image_maximum_exact() -> None:
    gen = torch.Generator().manual_seed(5)
    bank = torch.randn(3000, 16, generator=gen)
    queries = torch.randn(2 * 300, 16, generator=gen) * 1.5
    exact_d, _ = exact_search(queries, bank)
    index = build_index(bank, "hnsw", ef_search=1)  # a deliberately poor search: many missed neighbours
    approx_d, approx_i = index.search(queries)
    assert (approx_d >= exact_d - 1e-4).all()  # a miss can only over-estimate
    assert (approx_d > exact_d + 1e-4).any()  # ... and this search does miss
    d, i = index.exact_maximum(queries, approx_d, approx_i, 2)
    for g in range(2):
        sl = slice(300 * g, 300 * (g + 1))
        assert float(d[sl].max()) == pytest.approx(float(exact_d[sl].max()), rel=1e-5)
        top = int(torch.argmax(d[sl])) + 300 * g
        assert float(torch.dist(queries[top], bank[i[top]])) == pytest.approx(float(d[top]), rel=1e-4)
    assert (d <= approx_d + 1e-5).all()
    exact_index = build_index(bank, "exact")
    same = exact_index.exact_maximum(queries, exact_d, torch.zeros_like(approx_i), 2)
    assert torch.equal(same[0], exact_d)


def test_exports_from_several_threads_do_not_collide() -> None:
    """torch.onnx.export keeps global state; the service loads models in threads (found by a warning in CI)."""
    import threading

    from core.models.runtime import export_onnx

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                assert export_onnx(net, 32, 32, 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ------------------------------------------------------------------ the runtime choice (OpenVINO or ONNX Runtime)
def _has_openvino() -> bool:
    from core.models.runtime import available

    return "openvino" in available()


needs_openvino = pytest.mark.skipif(not _has_openvino(), reason="OpenVINO is not installed")


@pytest.fixture(autouse=True)
def _fresh_process_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test here measures as a new process would (no choice held from another test)."""
    from core.models import runtime

    monkeypatch.setattr(runtime, "_PROCESS_CHOICES", {})


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3)).eval()


@pytest.fixture()
def choice_file(tmp_path, monkeypatch: pytest.MonkeyPatch):
    from core.models import runtime

    path = tmp_path / "cache" / "runtime_choice.json"
    monkeypatch.setenv("INSPECT_RUNTIME_CHOICE", str(path))
    monkeypatch.setattr(runtime, "busy", lambda: False)  # a busy test machine would not record
    return path


def test_auto_runtime_falls_back_to_onnx_runtime_without_openvino(choice_file, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from core.models.runtime import OnnxGraph, available

    monkeypatch.setitem(sys.modules, "openvino", None)  # ``import openvino`` now raises ImportError
    assert available() == ("onnx",)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = _net()(x)
    for runtime in ("auto", "openvino"):
        graph = OnnxGraph(_net(), 1, runtime)
        out = graph(x)[0]
        assert graph.choices[(16, 16)].runtime == "onnx"
        assert torch.allclose(out, ref, rtol=1e-4, atol=1e-5)
    assert not choice_file.exists()  # one backend: nothing measured, nothing recorded


@needs_openvino
def test_auto_runtime_measures_once_and_records_the_choice(choice_file) -> None:
    import json

    from core.models.runtime import RECORD_VERSION, OnnxGraph

    graph = OnnxGraph(_net(), 1, "auto")
    graph(torch.rand(1, 3, 16, 16))
    choice = graph.choices[(16, 16)]
    assert choice.how == "measured" and set(choice.ms) == {"onnx", "openvino"}
    assert choice.runtime == min(choice.ms, key=choice.ms.__getitem__)
    saved = json.loads(choice_file.read_text())
    assert saved["version"] == RECORD_VERSION and saved["choices"][choice.key]["runtime"] == choice.runtime
    again = OnnxGraph(_net(), 1, "auto")  # another model of the same network: the record, no timing
    again(torch.rand(1, 3, 16, 16))
    assert again.choices[(16, 16)].how == "recorded" and again.choices[(16, 16)].runtime == choice.runtime


@needs_openvino
@pytest.mark.parametrize("recorded", ["onnx", "openvino"])
def test_a_recorded_choice_is_used_as_recorded(choice_file, recorded: str) -> None:
    from core.models.runtime import RECORD_VERSION, OnnxGraph, choice_key, network_id

    net = _net()
    key = choice_key(network_id(net), 16, 16, torch.get_num_threads())
    from core.files import atomic_write_json

    atomic_write_json(choice_file, {"version": RECORD_VERSION, "choices": {key: {"runtime": recorded, "ms": {}}}})
    graph = OnnxGraph(net, 1, "auto")
    x = torch.rand(1, 3, 16, 16)
    out = graph(x)[0]
    assert graph.choices[(16, 16)].runtime == recorded and graph.choices[(16, 16)].how == "recorded"
    with torch.no_grad():
        assert torch.allclose(out, net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"version": 99, "choices": {}}',
                                     '{"version": 1, "choices": {"k": {"runtime": "tensorrt"}}}', ""])
def test_a_corrupt_choice_file_is_measured_again_and_rewritten(choice_file, content: str, caplog) -> None:
    import json

    from core.models.runtime import OnnxGraph, available

    choice_file.parent.mkdir(parents=True)
    choice_file.write_text(content)
    graph = OnnxGraph(_net(), 1, "auto")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(graph(x)[0], _net()(x), rtol=1e-4, atol=1e-5)
    if "openvino" in available():
        assert graph.choices[(16, 16)].how == "measured"
        assert json.loads(choice_file.read_text())["choices"]  # rewritten, readable
        if content not in ("", '{"version": 1, "choices": {"k": {"runtime": "tensorrt"}}}'):
            assert "unreadable" in caplog.text


def test_a_choice_measured_on_a_busy_machine_is_not_recorded(choice_file, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.models import runtime

    monkeypatch.setattr(runtime, "busy", lambda: True)
    graph = runtime.OnnxGraph(_net(), 1, "auto")
    graph(torch.rand(1, 3, 16, 16))
    assert graph.choices[(16, 16)].runtime in ("onnx", "openvino")
    assert not choice_file.exists()


@needs_openvino
def test_a_busy_machine_s_choice_holds_for_the_process(choice_file, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not recorded, but kept for this process: a model trained and the same model loaded again in one process
    run the same backend (each measuring anew could pick the other: scores then differ by fp32 rounding, and
    save -> load was no longer bit for bit on a loaded machine)."""
    from core.models import runtime

    monkeypatch.setattr(runtime, "busy", lambda: True)
    first = runtime.OnnxGraph(_net(), 1, "auto")
    first(torch.rand(1, 3, 16, 16))
    timed: list[int] = []
    real = runtime.time_runtimes
    monkeypatch.setattr(runtime, "time_runtimes", lambda *a, **k: (timed.append(1), real(*a, **k))[1])
    again = runtime.OnnxGraph(_net(), 1, "auto")
    again(torch.rand(1, 3, 16, 16))
    assert timed == [] and again.choices[(16, 16)].runtime == first.choices[(16, 16)].runtime
    assert again.choices[(16, 16)].how == "measured in this process" and not choice_file.exists()


def test_an_unwritable_choice_file_still_chooses(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.models import runtime
    from core.models.runtime import OnnxGraph

    monkeypatch.setattr(runtime, "busy", lambda: False)

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("INSPECT_RUNTIME_CHOICE", str(blocker / "sub" / "choice.json"))  # under a file: cannot write
    graph = OnnxGraph(_net(), 1, "auto")
    graph(torch.rand(1, 3, 16, 16))
    assert graph.choices[(16, 16)].runtime in ("onnx", "openvino")


@needs_openvino
@pytest.mark.parametrize("runtime", ["openvino", "onnx", "auto"])
def test_graph_runtimes_score_within_1e4_of_torch_fp32(runtime: str, choice_file) -> None:
    """PatchCore's features and EfficientAD's scores and maps: each graph runtime within 1e-4 (relative to the
    output's magnitude) of the torch fp32 reference path."""
    from core.models.runtime import max_relative_difference

    fast = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "runtime": runtime}))
    ref = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "runtime": "torch"}))
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert max_relative_difference([fast.embed(batch).numpy()], [ref.embed(batch).numpy()]) <= 1e-4
    ead = EfficientAD(EfficientADConfig(steps=1, runtime=runtime))
    with torch.no_grad():
        for p in ead.model.student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    torch_ead = EfficientAD(EfficientADConfig(steps=1, runtime="torch"))
    torch_ead.load_state(ead.state())
    x = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    (sa, ma), (sb, mb) = ead.forward(x), torch_ead.forward(x)
    assert max_relative_difference([sa.numpy(), ma.numpy()], [sb.numpy(), mb.numpy()]) <= 1e-4
    assert float(mb.std()) > 0


@needs_openvino
def test_openvino_save_load_gives_identical_scores(choice_file) -> None:
    from tests.conftest import rgb

    images = [rgb(80, 72, seed) for seed in range(6)]
    model = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "runtime": "openvino"}))
    model.fit(images[:4])
    loaded = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "runtime": "openvino"}))
    loaded.load_state(model.state())
    a, b = model.predict(images[4:]), loaded.predict(images[4:])
    assert [p.score for p in a] == [p.score for p in b]
    assert all(np.array_equal(p.anomaly_map, q.anomaly_map) for p, q in zip(a, b, strict=True))


# ------------------------------------------------------------------ bf16-screened exact search
def _clustered(n_bank: int, n_query: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-negative features with near neighbours, as PatchCore's are (ReLU features, patches like bank entries)."""
    gen = torch.Generator().manual_seed(seed)
    bank = torch.rand(n_bank, dim, generator=gen) * 3
    queries = bank[torch.randint(0, n_bank, (n_query,), generator=gen)] + 0.3 * torch.rand(n_query, dim, generator=gen)
    return bank, queries


@pytest.mark.parametrize(("n_bank", "n_query", "dim"), [(3000, 500, 152), (50, 40, 8), (1, 5, 4)])
def test_bf16_screened_distances_stay_within_their_bound(n_bank: int, n_query: int, dim: int) -> None:
    from core.models.knn import bf16_bank, screened_sq_distances

    bank, queries = _clustered(n_bank, n_query, dim, n_bank)
    exact_sq = (torch.cdist(queries.double(), bank.double()).min(dim=1).values ** 2)
    approx, bound = screened_sq_distances(queries, bf16_bank(bank))
    assert ((approx.double() - exact_sq).abs() <= bound.double()).all()
    assert (bound.double() <= 0.05 * exact_sq.max()).all()  # tight enough to screen with


@pytest.mark.parametrize(("n_bank", "groups", "patches"), [(3000, 2, 400), (2000, 1, 1024), (40, 3, 7)])
def test_bf16_patch_search_keeps_each_image_maximum_exact(n_bank: int, groups: int, patches: int) -> None:
    bank, queries = _clustered(n_bank, groups * patches, 152, 7)
    queries[3] += 2.0  # one clearly anomalous patch in the first image
    fp32 = build_index(bank, "exact", precision="fp32")
    bf16 = build_index(bank, "exact", precision="bf16")
    assert bf16.precision == "bf16" and fp32.precision == "fp32"
    (d32, i32), (d16, i16) = fp32.patch_search(queries, groups), bf16.patch_search(queries, groups)
    rows32 = d32.view(groups, -1).argmax(dim=1)
    rows16 = d16.view(groups, -1).argmax(dim=1)
    top32, top16 = d32.view(groups, -1).amax(dim=1), d16.view(groups, -1).amax(dim=1)
    assert torch.allclose(top16, top32, rtol=1e-4)  # fp32 rounding of |b|^2 - 2 q.b + |q|^2 itself
    assert torch.equal(rows16, rows32)
    flat = rows32 + torch.arange(groups) * patches
    assert torch.equal(i16[flat], i32[flat])
    assert torch.allclose(d16, d32, rtol=1e-2)  # the map: within the bf16 screen's bound


def test_patchcore_scores_with_bf16_search_equal_fp32_within_1e4() -> None:
    from tests.conftest import rgb

    images = [rgb(64, 64, seed) for seed in range(30)]
    model = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "coreset_ratio": 1.0, "runtime": "onnx"}))
    model.fit(images[:24])
    assert model.memory_bank.shape[0] >= 1024
    reference = [p.score for p in model.predict(images[24:])]
    model._index = build_index(model.memory_bank, "exact", precision="bf16")
    screened = [p.score for p in model.predict(images[24:])]
    assert screened == pytest.approx(reference, rel=1e-4)


def test_unknown_precision_is_named() -> None:
    with pytest.raises(ValueError, match="expected precision in .* found 'fp8'"):
        build_index(torch.zeros(3, 2), "exact", precision="fp8")


# ------------------------------------------------------------------ batch-1 latency: same values, fewer steps
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", [(64, 64), (37, 91)])
def test_input_tensor_equals_the_torch_formula_bit_for_bit(normalize: bool, shape: tuple[int, int]) -> None:
    from core.models.preprocess import InputSpec, to_array, to_tensor

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(3)]
    images[0][0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]
    spec = InputSpec(64, 64, normalize=normalize, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    from PIL import Image

    resized = np.stack([im if im.shape[:2] == (64, 64) else
                        np.asarray(Image.fromarray(im).resize((64, 64), Image.Resampling.BILINEAR)) for im in images])
    reference = torch.from_numpy(resized).permute(0, 3, 1, 2).float().div_(255.0)  # the formula before the table
    if normalize:
        reference = (reference - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    assert torch.equal(to_tensor(images, spec), reference)
    assert np.array_equal(to_array(images, spec), reference.numpy())


@pytest.mark.parametrize(("bf16_seconds", "expected"), [(0.001, "bf16"), (0.003, "fp32")])
def test_auto_precision_is_timed_on_the_real_searches(monkeypatch: pytest.MonkeyPatch, bf16_seconds: float,
                                                       expected: str) -> None:
    """Nothing is timed at build (made-up queries misled the choice); the first real searches are timed both
    ways (a fake clock here: fp32 takes 2 ms, bf16 ``bf16_seconds``), fp32's result is returned meanwhile, and the
    faster is kept after AUTO_TRIALS of them."""
    from core.models import knn

    bank, queries = _clustered(2000, 2 * 300, 152, 3)
    index = build_index(bank, "exact", precision="auto")
    assert index.precision == "auto" and index.trials == {}
    clock = [0.0]
    monkeypatch.setattr(knn.time, "perf_counter", lambda: clock[0])
    screened, fp32 = index._screened_patch_search, index._fp32_patch_search

    def slow(search, seconds):
        def run(q, groups):
            clock[0] += seconds
            return search(q, groups)
        return run

    monkeypatch.setattr(index, "_screened_patch_search", slow(screened, bf16_seconds))
    monkeypatch.setattr(index, "_fp32_patch_search", slow(fp32, 0.002))
    reference = build_index(bank, "exact", precision="fp32").patch_search(queries, 2)
    for _ in range(knn.AUTO_TRIALS):
        dist, idx = index.patch_search(queries, 2)
        assert torch.equal(dist, reference[0]) and torch.equal(idx, reference[1])
    assert index.precision == expected
    assert (index.packed is None) == (expected == "fp32")
    assert len(index.trials["bf16"]) == len(index.trials["fp32"]) == knn.AUTO_TRIALS


def test_auto_precision_stays_fp32_on_small_banks() -> None:
    assert build_index(torch.rand(100, 8), "exact", precision="auto").precision == "fp32"


@pytest.mark.parametrize("num_neighbors", [9, 1])
def test_image_scores_equal_anomalib_bit_for_bit(num_neighbors: int) -> None:
    """The fast path's image score (bank norms computed once) is anomalib's compute_anomaly_score, exactly."""
    gen = torch.Generator().manual_seed(1)
    model = PatchCore(PatchCoreConfig.from_dict({**PATCHCORE_TEST_SETTINGS, "num_neighbors": num_neighbors,
                                                 "runtime": "torch"}))
    model.set_memory_bank(torch.rand(500, model.embedding_dim, generator=gen))
    flat = torch.rand(3 * 64, model.embedding_dim, generator=gen)
    dist, loc = model.search_index().patch_search(flat, 3)
    for _ in range(2):  # the second call reuses the cached norms
        ours = model._image_scores(dist.view(3, -1), loc.view(3, -1), flat)
        assert torch.equal(ours, model.model.compute_anomaly_score(dist.view(3, -1), loc.view(3, -1), flat))
    model.set_memory_bank(torch.rand(400, model.embedding_dim, generator=gen))  # a new bank: new norms
    dist, loc = model.search_index().patch_search(flat, 3)
    assert torch.equal(model._image_scores(dist.view(3, -1), loc.view(3, -1), flat),
                       model.model.compute_anomaly_score(dist.view(3, -1), loc.view(3, -1), flat))


@pytest.fixture
def started_processes(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every ``multiprocessing.Process`` started while the test runs, recorded and never run."""
    import multiprocessing

    started: list[object] = []

    def start(process: object) -> None:
        started.append(process)

    monkeypatch.setattr(multiprocessing.Process, "start", start)
    return started


def tiny_onnx() -> tuple[torch.nn.Module, bytes]:
    """A small conv net and its ONNX bytes (input "input" [1, 3, 16, 16])."""
    import io

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 3, 16, 16), buffer, input_names=["input"], dynamo=False)
    return model, buffer.getvalue()


def test_openvino_compiles_without_telemetry_processes(started_processes: list[object]) -> None:
    """Nothing is sent at run time: OpenVINO's model converter (``ov.convert_model``) starts a process per call to
    post telemetry over the network (a fork from a threaded process, which aborted one in the full suite); the
    runner reads the ONNX bytes directly, with the same outputs."""
    pytest.importorskip("openvino")
    from core.models.runtime import openvino_runner

    model, onnx = tiny_onnx()
    x = torch.rand(1, 3, 16, 16)
    out = openvino_runner(onnx, 1)(x.numpy())[0]
    assert started_processes == []
    with torch.no_grad():
        assert np.allclose(out, model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_the_bundles_openvino_ir_is_the_same_network_and_sends_nothing(started_processes: list[object]) -> None:
    ov = pytest.importorskip("openvino")
    from core.line.export import openvino_ir

    model, onnx = tiny_onnx()
    ir = openvino_ir(onnx)
    assert ir is not None and started_processes == []
    core = ov.Core()
    compiled = core.compile_model(core.read_model(ir[0], ir[1]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.rand(1, 3, 16, 16)
    out = compiled.create_infer_request().infer({0: x.numpy()})[compiled.outputs[0]]
    with torch.no_grad():
        assert np.allclose(out, model(x).numpy(), rtol=1e-5, atol=1e-6)
