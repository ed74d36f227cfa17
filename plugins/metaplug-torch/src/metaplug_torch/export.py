"""Export a model as an artefact that predicts without metaplug: a ``torch.export`` program
(``.pt2``) or ONNX.

Both take ``x`` float32 ``(N, *input_shape)`` (channels first, as metaplug's episodes)
and return the outputs ``(N, out)``. Load them with::

    import torch
    program = torch.export.load("model.pt2")
    outputs = program.module()(x)                                   # torch only

    import onnxruntime
    session = onnxruntime.InferenceSession("model.onnx")
    outputs = session.run(None, {"x": x_numpy})[0]                  # no torch needed

Batch norm normalises with the statistics of the ``x`` it is given, as every metaplug
model does, so predict on a batch of examples, not one at a time. The adapted weights
(and, for ProtoNets, the support set's prototypes) are constants of the artefact.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from metaplug.errors import ConfigError

FORMATS = ("torch-export", "onnx")
SUFFIXES = {"torch-export": ".pt2", "onnx": ".onnx"}
ONNX_TOLERANCE = 1e-4
"""Largest difference between onnxruntime's outputs and metaplug's, relative to their scale."""


class Predictor(torch.nn.Module):
    """A prediction function as a module, for the exporters (float32 in, float32 out)."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype) -> None:
        super().__init__()
        self.function, self.dtype = forward, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.function(x.to(self.dtype)).to(torch.float32)


def export(
    forward: Callable[[torch.Tensor], torch.Tensor],
    example: np.ndarray,
    dtype: torch.dtype,
    path: str | Path,
    format: str,
) -> Path:
    """Write ``forward`` (a function of a batch of inputs) as ``format`` to the file ``path``,
    traced on ``example`` (a float32 batch of at least two inputs) with a dynamic batch size."""
    if format not in FORMATS:
        raise ConfigError(f"the torch backend exports {', '.join(FORMATS)}, not {format!r}")
    path = Path(path)
    if path.suffix != SUFFIXES[format]:
        raise ConfigError(f"a {format} file's name ends in {SUFFIXES[format]} (its loaders expect it), got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    module = Predictor(forward, dtype).eval()
    x = torch.as_tensor(np.ascontiguousarray(example, dtype=np.float32))
    shapes = ({0: torch.export.Dim("batch", min=2, max=1 << 20)},)
    with quiet():
        if format == "torch-export":
            torch.export.save(torch.export.export(module, (x,), dynamic_shapes=shapes), str(path))
        else:
            torch.onnx.export(
                module, (x,), str(path), input_names=["x"], output_names=["outputs"],
                dynamic_shapes=shapes, dynamo=True, external_data=False, verbose=False,
            )  # fmt: skip
            check_onnx(path, x, module(x).detach().numpy())
    return path


def check_onnx(path: Path, x: torch.Tensor, expected: np.ndarray) -> None:
    """Run the ONNX file with onnxruntime on ``x``: its outputs must be ``expected``."""
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("checking an ONNX export needs onnxruntime: pip install 'metaplug-torch[onnx]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"x": x.numpy()})[0]
    scale = max(float(np.abs(expected).max()), 1.0)
    if actual.shape != expected.shape or float(np.abs(actual - expected).max()) > ONNX_TOLERANCE * scale:
        path.unlink(missing_ok=True)
        raise ConfigError(f"onnxruntime's outputs differ from metaplug's for this model; {path} was not kept")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, warnings and log lines."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
