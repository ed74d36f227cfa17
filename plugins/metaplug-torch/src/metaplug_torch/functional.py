"""Any ``torch.nn.Module`` as a pure function of its parameters, and ``one_hot`` for ``vmap``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from metaplug.errors import ConfigError
from metaplug_torch.precision import FULL, Precision

Params = Mapping[str, torch.Tensor]


class FunctionalModel:
    """Calls ``module`` with parameters given as a name -> tensor mapping.

    Works for any module. Models with ``features`` and ``head`` submodules
    (every standard model) can also be embedded and have their head applied
    separately. Batch-norm layers must not track running statistics: their
    in-place updates cannot be replayed per task.

    :attr:`precision` (set by the algorithm from its ``precision`` option) is how each call
    computes: under bfloat16 autocast with ``bf16``, its output float32 again.
    """

    def __init__(self, module: nn.Module) -> None:
        for name, sub in module.named_modules():
            if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.track_running_stats:
                raise ConfigError(
                    f"batch-norm layer {name or type(sub).__name__!r} tracks running statistics; "
                    f"build it with track_running_stats=False (meta-learning uses each task's own statistics)"
                )
        self.module = module
        self.buffers = dict(module.named_buffers())
        self.names = [n for n, _ in module.named_parameters()]
        self.has_parts = isinstance(getattr(module, "features", None), nn.Module) and isinstance(
            getattr(module, "head", None), nn.Module
        )
        self.has_native_batch_norm = any(isinstance(m, nn.modules.batchnorm._NormBase) for m in module.modules())
        self.has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules())
        self.precision: Precision = FULL

    def parameters(self) -> dict[str, nn.Parameter]:
        return dict(self.module.named_parameters())

    def __call__(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        with self.precision.forward():
            output = functional_call(self.module, (dict(params), self.buffers), (x,))
        return self.precision.output(output)

    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """``features(x)``; the whole output for a module without ``features``/``head``."""
        if not self.has_parts:
            return self(params, x)
        with self.precision.forward():
            output = _call_part(self.module.get_submodule("features"), "features.", params, x)
        return self.precision.output(output)

    def head(self, params: Params, z: torch.Tensor) -> torch.Tensor:
        """``head(z)`` with the ``head.*`` entries of ``params``."""
        with self.precision.forward():
            output = _call_part(self.module.get_submodule("head"), "head.", params, z)
        return self.precision.output(output)

    def require_parts(self, algorithm: str) -> None:
        """Raise a :class:`~metaplug.errors.ConfigError` naming ``algorithm`` and the
        submodule names it looks for when the module has no ``features`` and ``head``."""
        if not self.has_parts:
            children = ", ".join(name for name, _ in self.module.named_children()) or "none"
            raise ConfigError(
                f"{algorithm} needs a model with a 'features' submodule (everything before the last layer) "
                f"and a 'head' submodule (the last one), with forward(x) == head(features(x)); "
                f"{type(self.module).__name__} has submodules {children}: set self.features = nn.Sequential(...) "
                "and self.head = nn.Linear(...) in its __init__"
            )


def _call_part(part: nn.Module, prefix: str, params: Params, x: torch.Tensor) -> torch.Tensor:
    sub = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
    return functional_call(part, sub, (x,))


def one_hot(labels: torch.Tensor, classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, classes)`` indicator matrix; works under ``vmap`` (unlike ``F.one_hot``)."""
    return (labels.unsqueeze(-1) == torch.arange(classes, device=labels.device)).to(dtype)
