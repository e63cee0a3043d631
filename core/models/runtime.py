"""Run a fixed torch sub-network through a graph runtime: the fast inference path of both detectors.

The network (PatchCore's backbone + pooling + embedding, or EfficientAD's whole forward pass) is exported in
memory with the TorchScript-based ONNX exporter (no file, no download) the first time an input size is seen,
and compiled by one of the :data:`BACKENDS`: ONNX Runtime (always installed) or OpenVINO (optional), both fp32,
using as many threads as torch does. Scores stay fp32 and equal to the torch path up to float rounding
(tests/test_runtime.py).

``runtime="auto"`` (the default) takes the backend measured fastest on THIS machine for this network and input
size: the first time a (CPU, threads, runtime versions, network structure, input size) is seen, every installed
backend is compiled and timed at batch 1 (:func:`time_runtimes`, the one timing helper; the export bundle uses it
too), its output checked against ONNX Runtime's (:data:`AGREEMENT`), and the winner recorded in a small JSON file
(:func:`core.settings.runtime_choice_file`, written atomically) so that later processes reuse it without timing
again; a measurement taken while the machine is busy (load above its cores) holds for that process only. OpenVINO missing, failing to compile, disagreeing with ONNX Runtime, or a record that cannot be read:
ONNX Runtime, with the reason logged. bf16 is never chosen here: on the networks measured it moved features by
0.7-4.5% (benchmarks/RESULTS.md "Export bundle" and "cpu_speed"), too much for a calibrated threshold.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import platform
import statistics
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from core import settings
from core.files import atomic_write_json
from core.progress import machine_load

log = logging.getLogger(__name__)

RUNTIMES: tuple[str, ...] = ("auto", "openvino", "onnx", "torch")
FALLBACK = "onnx"  # the backend every machine has
OPSET = 17
MAX_SESSIONS = 8
AGREEMENT = 1e-4  # largest output difference, relative to the output's largest magnitude, a backend may show
TIMING_REPEATS = 7
RECORD_VERSION = 1

Runner = Callable[[np.ndarray], list[np.ndarray]]  # batch [B, 3, H, W] float32 -> the network's outputs


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"expected runtime in {RUNTIMES}, found {runtime!r}")
    return runtime


def uses_graph(runtime: str) -> bool:
    """Whether ``runtime`` runs an exported graph (every runtime but ``"torch"``)."""
    return check_runtime(runtime) != "torch"


_EXPORT_LOCK = threading.Lock()  # torch.onnx.export keeps global state: one export at a time per process


def export_onnx(module: nn.Module, height: int, width: int, num_outputs: int) -> bytes:
    """ONNX bytes of ``module`` (eval mode, a copy: the original keeps its gradients) for ``[B, 3, height, width]``.

    The batch axis is dynamic; height and width are fixed (the backbones' "same" padding is computed from them).
    """
    frozen = copy.deepcopy(module).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    example = torch.zeros(1, 3, height, width)
    outputs = [f"out{i}" for i in range(num_outputs)]
    buffer = io.BytesIO()
    with _EXPORT_LOCK, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on shape arithmetic: shapes are fixed per graph by design
        torch.onnx.export(frozen, (example,), buffer, dynamo=False,  # type: ignore[arg-type]  # a file object works
                          opset_version=OPSET, input_names=["input"],
                          output_names=outputs, dynamic_axes={name: {0: "batch"} for name in ["input", *outputs]})
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------- backends
def session(model: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # No busy-waiting after a run: torch (search, map) runs right after on the same cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnxruntime_runner(model: bytes, threads: int) -> Runner:
    """ONNX bytes compiled by ONNX Runtime's CPU provider."""
    sess = session(model, threads)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(out) for out in sess.run(None, {"input": batch})]

    return run


def openvino_runner(model: bytes, threads: int) -> Runner:
    """ONNX bytes compiled by OpenVINO's CPU plugin in fp32 (``INFERENCE_PRECISION_HINT``: on CPUs with AMX or
    AVX512-BF16 its default would be bf16).

    Raises:
        ImportError: OpenVINO is not installed.
    """
    import openvino as ov

    core = ov.Core()
    # read_model, not ov.convert_model: the converter posts telemetry over the network from a forked process on
    # every call (tests/test_runtime.py); the ONNX frontend reads the same bytes into the same graph
    compiled = core.compile_model(core.read_model(model), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": max(1, threads), "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    outputs = list(compiled.outputs)
    lock = threading.Lock()  # one infer request: one call at a time (the service scores from threads)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        with lock:
            result = request.infer({0: batch})
            return [np.array(result[out]) for out in outputs]  # copies: the request reuses its buffers

    return run


BACKENDS: dict[str, Callable[[bytes, int], Runner]] = {"openvino": openvino_runner, "onnx": onnxruntime_runner}


def versions() -> dict[str, str]:
    """Version of each backend installed here (OpenVINO: absent when it cannot be imported)."""
    out = {"onnx": str(ort.__version__)}
    try:
        import openvino as ov
    except ImportError:
        return out
    out["openvino"] = str(ov.__version__).split("-")[0]
    return out


def available() -> tuple[str, ...]:
    """The graph backends installed here, in :data:`BACKENDS` order."""
    installed = versions()
    return tuple(name for name in BACKENDS if name in installed)


# ------------------------------------------------------------------------------------------------- timing
def median_ms(run: Callable[[np.ndarray], object], x: np.ndarray, repeats: int = TIMING_REPEATS,
              warmup: int = 2) -> float:
    """Median wall time in ms of ``run(x)`` over ``repeats`` calls after ``warmup`` calls (the one timing helper of
    the runtime choice, the export bundle and the benchmarks)."""
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1000.0)
    return float(statistics.median(times))


def time_runtimes(model: bytes, height: int, width: int, repeats: int = TIMING_REPEATS,
                  runners: dict[str, Runner] | None = None, threads: int | None = None) -> dict[str, float]:
    """Median ms per batch-1 run of each backend on THIS machine, fp32: ``runners`` when given, else every
    installed backend compiled from ``model`` (ONNX bytes for ``[B, 3, height, width]``)."""
    if runners is None:
        threads = torch.get_num_threads() if threads is None else threads
        runners = {name: BACKENDS[name](model, threads) for name in available()}
    x = np.random.default_rng(0).random((1, 3, height, width), dtype=np.float32)
    # in turns, twice: a neighbour's burst of load on a shared machine then hurts every backend alike
    rounds = [{name: median_ms(run, x, max(1, repeats // 2)) for name, run in runners.items()} for _ in range(2)]
    return {name: min(r[name] for r in rounds) for name in runners}


# ------------------------------------------------------------------------------------- the recorded choice
@dataclass(frozen=True)
class RuntimeChoice:
    """The backend one network at one input size uses on this machine.

    ``ms``: the measured median ms per batch-1 run of each backend (empty when nothing was timed); ``how``:
    ``"measured"``, ``"recorded"`` (read from the record file), ``"only"`` (one backend installed) or
    ``"fallback: <reason>"``; ``key``: the record's key (CPU, threads, versions, network, input size).
    """

    runtime: str
    how: str
    key: str
    ms: dict[str, float] = field(default_factory=dict)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def network_id(module: nn.Module) -> str:
    """A short hash of ``module``'s structure (its layers and their shapes, not its weights): what the speed of a
    backend depends on, so every trained model of one architecture shares its measurement."""
    return hashlib.sha256(repr(module).encode()).hexdigest()[:16]


def choice_key(network: str, height: int, width: int, threads: int) -> str:
    installed = versions()
    runtimes = ",".join(f"{name} {installed[name]}" for name in sorted(installed))
    return f"{cpu_name()} | {threads} threads | {runtimes} | network {network} | {height}x{width}"


def read_record(path: Path) -> dict[str, dict]:
    """The recorded choices (key -> entry); an absent, unreadable or malformed file is an empty record (logged:
    the choice is measured again and the file rewritten)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION or not isinstance(data.get("choices"), dict):
            raise ValueError(f"expected {{'version': {RECORD_VERSION}, 'choices': {{...}}}}")
        return {k: v for k, v in data["choices"].items() if isinstance(v, dict) and v.get("runtime") in BACKENDS}
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        log.warning("runtime choice file %s unreadable (%s): measuring again", path, exc)
        return {}


def _record(path: Path, key: str, choice: RuntimeChoice) -> bool:
    """Write ``choice`` into the record at ``path``; False when it cannot be written (logged)."""
    choices = read_record(path)
    choices[key] = {"runtime": choice.runtime, "ms": choice.ms, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        atomic_write_json(path, {"version": RECORD_VERSION, "choices": choices})
    except OSError as exc:  # a read-only home: the choice holds for this process, measured again by the next
        log.warning("could not record the runtime choice in %s: %s", path, exc)
        return False
    return True


def busy() -> bool:
    """Whether the machine's 1-minute load exceeds its cores (then timings are not worth recording; False where
    there is no load average)."""
    load = machine_load()
    return load is not None and load[0] > load[1]


_CHOICE_LOCK = threading.Lock()  # one measurement at a time per process (two threads would time each other)
# Choices measured in this process that the record does not keep (a busy machine, a read-only home): held here,
# so that every graph of one network at one size runs the same backend in it (a model trained and loaded again
# scores bit for bit the same); a recorded choice is read back from the record.
_PROCESS_CHOICES: dict[str, RuntimeChoice] = {}


def choose_runtime(model: bytes, network: str, height: int, width: int, threads: int,
                   record: Path | None = None) -> tuple[RuntimeChoice, Runner]:
    """The backend for ``model`` (ONNX bytes of ``network``, see :func:`network_id`) at ``height`` x ``width`` on
    this machine, and its compiled runner: recorded in ``record`` (default :func:`core.settings.runtime_choice_file`)
    or measured now and recorded. Falls back to ONNX Runtime whenever OpenVINO cannot be used."""
    path = settings.runtime_choice_file() if record is None else record
    key = choice_key(network, height, width, threads)
    names = available()
    if names == (FALLBACK,):
        return RuntimeChoice(FALLBACK, "only", key), onnxruntime_runner(model, threads)
    with _CHOICE_LOCK:
        held = _PROCESS_CHOICES.get(key)
        if held is not None:
            return (RuntimeChoice(held.runtime, "measured in this process", key, dict(held.ms)),
                    BACKENDS[held.runtime](model, threads))
        saved = read_record(path).get(key)
        if saved is not None:
            try:
                return (RuntimeChoice(saved["runtime"], "recorded", key, dict(saved.get("ms", {}))),
                        BACKENDS[saved["runtime"]](model, threads))
            except Exception as exc:
                log.warning("recorded runtime %s failed to compile (%s): measuring again", saved["runtime"], exc)
        runners = {FALLBACK: onnxruntime_runner(model, threads)}
        for name in names:
            if name == FALLBACK:
                continue
            try:
                runners[name] = BACKENDS[name](model, threads)
            except Exception as exc:
                log.warning("runtime %s cannot compile the network (%s): not used", name, exc)
        x = np.random.default_rng(1).random((1, 3, height, width), dtype=np.float32)
        reference = runners[FALLBACK](x)
        for name in [n for n in runners if n != FALLBACK]:
            difference = max_relative_difference(runners[name](x), reference)
            if not difference <= AGREEMENT:
                log.warning("runtime %s differs from ONNX Runtime by %.1e (relative; expected <= %.0e): not used",
                            name, difference, AGREEMENT)
                del runners[name]
        ms = time_runtimes(model, height, width, runners=runners)
        best = min(ms, key=ms.__getitem__)
        choice = RuntimeChoice(best, "measured", key, ms)
        if busy():  # other work on the cores skews the timings: this process only, measured again by the next
            log.info("machine busy while timing the runtimes: choice %s not recorded (kept for this process)", best)
            _PROCESS_CHOICES[key] = choice
        elif not _record(path, key, choice):  # a read-only home: this process only too
            _PROCESS_CHOICES[key] = choice
        log.info("runtime for %s: %s (%s)", key, best, ", ".join(f"{n} {v:.1f} ms" for n, v in ms.items()))
        return choice, runners[best]


def max_relative_difference(outputs: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """Largest absolute difference of ``outputs`` from ``reference`` (same order and shapes), relative to each
    reference output's largest magnitude."""
    if len(outputs) != len(reference):
        raise ValueError(f"expected {len(reference)} outputs, found {len(outputs)}")
    worst = 0.0
    for out, ref in zip(outputs, reference, strict=True):
        a, b = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        if a.shape != b.shape:
            raise ValueError(f"expected an output of shape {b.shape}, found {a.shape}")
        worst = max(worst, float(np.abs(a - b).max(initial=0.0) / max(float(np.abs(b).max(initial=0.0)), 1e-12)))
    return worst


# ------------------------------------------------------------------------------------------------ graphs
class OnnxGraph:
    """``module`` (batch ``[B, 3, H, W]`` -> tensor or tuple of tensors) exported and compiled per input size by
    ``runtime`` (``"auto"``, ``"openvino"`` or ``"onnx"``; see the module docstring).

    Runners for the last :data:`MAX_SESSIONS` input sizes are kept; each new size costs one export (about a
    second for the networks used here) and, the first time on a machine with ``"auto"``, one measurement.
    ``choices`` keeps what each size uses. ``"openvino"`` where OpenVINO is missing runs ONNX Runtime (logged).
    """

    def __init__(self, module: nn.Module, num_outputs: int, runtime: str = "auto") -> None:
        if not uses_graph(runtime):
            raise ValueError(f"expected a graph runtime in {RUNTIMES[:-1]}, found {runtime!r}")
        self.module = module
        self.num_outputs = num_outputs
        self.runtime = runtime
        self.choices: dict[tuple[int, int], RuntimeChoice] = {}
        self._runners: OrderedDict[tuple[int, int], Runner] = OrderedDict()
        self._lock = threading.Lock()

    def _compile(self, height: int, width: int) -> tuple[RuntimeChoice, Runner]:
        model = export_onnx(self.module, height, width, self.num_outputs)
        threads = torch.get_num_threads()
        network = network_id(self.module)
        if self.runtime == "auto":
            return choose_runtime(model, network, height, width, threads)
        key = choice_key(network, height, width, threads)
        if self.runtime == "openvino":
            try:
                return RuntimeChoice("openvino", "asked", key), openvino_runner(model, threads)
            except ImportError:
                log.warning("runtime 'openvino' asked for but OpenVINO is not installed: ONNX Runtime")
                return RuntimeChoice(FALLBACK, "fallback: OpenVINO not installed", key), onnxruntime_runner(model, threads)
        return RuntimeChoice(FALLBACK, "asked", key), onnxruntime_runner(model, threads)

    def _runner(self, height: int, width: int) -> Runner:
        key = (height, width)
        with self._lock:
            if key in self._runners:
                self._runners.move_to_end(key)
                return self._runners[key]
            choice, runner = self._compile(height, width)
            self.choices[key] = choice
            self._runners[key] = runner
            while len(self._runners) > MAX_SESSIONS:
                old, _ = self._runners.popitem(last=False)
                self.choices.pop(old, None)
            return runner

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Outputs of the network for ``batch: [B, 3, H, W]`` (float32), as torch tensors."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a batch [B, 3, H, W], found {tuple(batch.shape)}")
        run = self._runner(int(batch.shape[2]), int(batch.shape[3]))
        data = np.ascontiguousarray(batch.detach().float().numpy())
        return tuple(torch.from_numpy(out) for out in run(data))

    def clear(self) -> None:
        with self._lock:
            self._runners.clear()
            self.choices.clear()
