"""Run a fixed torch sub-network through ONNX Runtime: the fast inference path of both detectors.

The network (PatchCore's backbone + pooling + embedding, or EfficientAD's whole forward pass) is exported in
memory with the TorchScript-based ONNX exporter (no file, no download) the first time an input size is seen,
and run by an ONNX Runtime CPU session using as many threads as torch does. Scores stay fp32 and equal to the
torch path up to float rounding (tests/test_runtime.py). The speed-up is measured in benchmarks/RESULTS.md
("Inference latency"); ONNX Runtime's graph optimisations (batch norms folded into convolutions, fused
activations) are the likely reason.
"""

from __future__ import annotations

import copy
import io
import threading
import warnings
from collections import OrderedDict

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

RUNTIMES: tuple[str, ...] = ("onnx", "torch")
OPSET = 17
MAX_SESSIONS = 8


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise ValueError(f"expected runtime in {RUNTIMES}, found {runtime!r}")
    return runtime


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


def session(model: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # No busy-waiting after a run: torch (search, map) runs right after on the same cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class OnnxGraph:
    """``module`` (batch ``[B, 3, H, W]`` -> tensor or tuple of tensors) compiled per input size.

    Sessions for the last :data:`MAX_SESSIONS` input sizes are kept; each new size costs one export
    (about a second for the networks used here).
    """

    def __init__(self, module: nn.Module, num_outputs: int) -> None:
        self.module = module
        self.num_outputs = num_outputs
        self._sessions: OrderedDict[tuple[int, int], ort.InferenceSession] = OrderedDict()
        self._lock = threading.Lock()

    def _session(self, height: int, width: int) -> ort.InferenceSession:
        key = (height, width)
        with self._lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key]
            sess = session(export_onnx(self.module, height, width, self.num_outputs), torch.get_num_threads())
            self._sessions[key] = sess
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
            return sess

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Outputs of the network for ``batch: [B, 3, H, W]`` (float32), as torch tensors."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a batch [B, 3, H, W], found {tuple(batch.shape)}")
        sess = self._session(int(batch.shape[2]), int(batch.shape[3]))
        data = np.ascontiguousarray(batch.detach().float().numpy())
        return tuple(torch.from_numpy(out) for out in sess.run(None, {"input": data}))

    def clear(self) -> None:
        with self._lock:
            self._sessions.clear()
