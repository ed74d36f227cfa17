"""The ``precision`` option on torch: TensorFloat-32 switches and bfloat16 autocast.

``full``
    float32 stays IEEE float32 on a GPU: cuBLAS matrix products and cuDNN convolutions with
    TensorFloat-32 off (torch's own default lets cuDNN convolutions use it).
``tf32``
    both in TensorFloat-32 (``torch.backends.cuda.matmul.fp32_precision`` and
    ``torch.backends.cudnn.conv.fp32_precision`` set to ``"tf32"``; ``allow_tf32`` before
    torch 2.9). The switches only reach CUDA kernels, so on a CPU metaplug leaves them alone
    and nothing changes, bit for bit.
``bf16``
    mixed precision: each call of the model runs under ``torch.autocast`` with bfloat16 on the
    run's device (CPU included), so its matrix products and convolutions read bfloat16 copies
    of the float32 weights, and its output comes back as float32. The weights, the inner-loop
    updates, everything the algorithm computes from the model's outputs (prototypes, losses,
    softmax) and the optimizer's state stay float32; the backward of each operation runs in the
    dtype autocast chose for it, second-order gradients (``create_graph=True``) included.

The switches are process-wide, so :meth:`Precision.scope` sets them for one step (or
evaluation, adaptation) and restores them after; each call of the model sets them too
(:meth:`Precision.forward`), so that a prediction computes as the evaluation did.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from metaplug.contract.hyperparameters import PRECISION, check_precision
from metaplug.errors import ConfigError

_CUDNN: Any = torch.backends.cudnn  # its ``conv`` module is set at run time (untyped)
NEW_SWITCHES = hasattr(getattr(_CUDNN, "conv", None), "fp32_precision")
"""torch 2.9 and later set TensorFloat-32 with ``fp32_precision`` (``"tf32"``/``"ieee"``);
earlier versions with ``allow_tf32``, which the newer ones deprecate."""


def tf32_switches() -> tuple[Any, Any]:
    """The cuBLAS matrix-product and cuDNN convolution TensorFloat-32 switches as they are."""
    if NEW_SWITCHES:
        return torch.backends.cuda.matmul.fp32_precision, _CUDNN.conv.fp32_precision
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def set_tf32_switches(matmul: Any, conv: Any) -> None:
    """Set the two switches (values as :func:`tf32_switches` gives them)."""
    if NEW_SWITCHES:
        torch.backends.cuda.matmul.fp32_precision = matmul
        _CUDNN.conv.fp32_precision = conv
    else:  # pragma: no cover - torch before 2.9
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv


class Precision:
    """How a model on ``device`` with weights of ``dtype`` computes under the option ``name``
    (one of :data:`~metaplug.contract.hyperparameters.PRECISION`)."""

    def __init__(self, name: str = "full", dtype: torch.dtype = torch.float32, device: Any = "cpu") -> None:
        if name not in PRECISION:
            raise ConfigError(f"precision must be one of {', '.join(PRECISION)}, got {name!r}")
        check_precision(name, str(dtype).removeprefix("torch."))
        self.name = name
        self.device_type = torch.device(device).type
        self.autocast = torch.bfloat16 if name == "bf16" else None
        """The dtype the model's forward computes in under autocast (``None``: its own)."""

    @contextlib.contextmanager
    def scope(self) -> Iterator[None]:
        """TensorFloat-32 on (``tf32``) or off (``full``, ``bf16``) for the block, restored after;
        nothing to set on a device other than CUDA (the switches reach no other kernels)."""
        if self.device_type != "cuda":
            yield
            return
        enabled = self.name == "tf32"
        wanted = ("tf32" if enabled else "ieee") if NEW_SWITCHES else enabled
        before = tf32_switches()
        set_tf32_switches(wanted, wanted)
        try:
            yield
        finally:
            set_tf32_switches(*before)

    @contextlib.contextmanager
    def forward(self) -> Iterator[None]:
        """The block (a model's forward) in :meth:`scope`, under bfloat16 autocast with ``bf16``."""
        with self.scope():
            if self.autocast is None:
                yield
                return
            with torch.autocast(self.device_type, dtype=self.autocast):
                yield

    def output(self, t: torch.Tensor) -> torch.Tensor:
        """A model's output in float32 again (``bf16``); unchanged otherwise."""
        return t.float() if self.autocast is not None and t.dtype == self.autocast else t


FULL = Precision()
"""The default: the model's own dtype, TensorFloat-32 off."""


__all__ = ["FULL", "Precision", "set_tf32_switches", "tf32_switches"]
