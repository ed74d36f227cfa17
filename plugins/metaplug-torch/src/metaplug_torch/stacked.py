"""Stacked weights: the ``vectorized`` batching of the MAML family on multi-layer perceptrons.

``torch.func.vmap`` runs any per-task function over a meta-batch, but on a model as small
as the sinusoid MLP (1 761 weights) its per-operation cost (batching rules,
``functional_call`` re-binding the module's parameters, ``torch.func.grad``'s own graph)
is most of the step. For a model made only of linear layers and elementwise
activations, every task's fast weights can instead be one tensor with a leading task
axis (``(tasks, out, in)``) and each layer one batched matrix product
(``torch.baddbmm``). The inner gradient is the gradient of the sum of the task losses
with respect to those tensors: tasks are independent, so each slice is its task's own
gradient. The whole meta-batch then costs the operations of one task, as TensorFlow's
task axis does.

The results are the per-task loops' up to float rounding (the tests compare them in
float64). :func:`plan` says which models qualify (:class:`StackedMLP.of`) and which inner
rules (the elementwise built-in ones); the algorithms fall back to ``vmap`` otherwise.
Set :data:`ENABLED` to ``False`` to always use ``vmap``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metaplug.contract.freezing import FrozenRule
from metaplug.contract.interfaces import InnerRule, apply_rule, initial_state
from metaplug_torch import inner, models

ENABLED = True
"""Run the MAML family's ``vectorized`` mode with stacked weights where :func:`plan` allows
(read at every step; ``False``: ``vmap`` always)."""

Params = Mapping[str, torch.Tensor]
Activation = Callable[[torch.Tensor], torch.Tensor]

ELEMENTWISE_RULES: tuple[type, ...] = (inner.InnerSGD, inner.InnerMetaSGD, inner.InnerAdam, inner.InnerRMSprop)
"""Inner rules that act on each weight entry alone, so a task axis on the weights (and
none on the learnables, which broadcast) gives every task its own update. A user's rule
may reduce over a weight (say, clip by its norm): it runs under ``vmap`` instead."""


@dataclass(frozen=True)
class Layer:
    """One step of the network: a linear layer (``weight`` and ``bias`` names, the bias
    ``None`` when absent) or, with ``weight`` ``None``, the elementwise ``activation``."""

    weight: str | None = None
    bias: str | None = None
    activation: Activation | None = None


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2)  # each example's features, after the task and example axes


FLATTEN = Layer(activation=_flatten)
RELU = Layer(activation=F.relu)


def _activation(module: nn.Module) -> Activation | None:
    """The function of an elementwise activation module (exact types only: a subclass may
    change ``forward``), else ``None``."""
    kind = type(module)
    if kind is nn.ReLU:
        return F.relu
    if kind is nn.Tanh:
        return torch.tanh
    if kind is nn.Sigmoid:
        return torch.sigmoid
    if kind is nn.SiLU:
        return F.silu
    if kind is nn.Identity:
        return lambda x: x
    if kind is nn.LeakyReLU:
        slope = float(getattr(module, "negative_slope"))  # noqa: B009 (typed Tensor | Module on nn.Module)
        return lambda x: F.leaky_relu(x, slope)
    if kind is nn.GELU:
        approximate = str(getattr(module, "approximate"))  # noqa: B009
        return lambda x: F.gelu(x, approximate=approximate)
    if kind is nn.ELU:
        alpha = float(getattr(module, "alpha"))  # noqa: B009
        return lambda x: F.elu(x, alpha)
    return None


def _layers(module: nn.Module, prefix: str) -> list[Layer] | None:
    """``module``'s forward as :class:`Layer` steps on ``(tasks, examples, ...)`` inputs, or
    ``None`` when it is not made only of linear layers and elementwise activations."""
    kind = type(module)
    if kind is nn.Linear:
        return [Layer(f"{prefix}weight", f"{prefix}bias" if module.bias is not None else None)]
    if kind is models.DenseStack and isinstance(module, models.DenseStack):
        steps = [FLATTEN]
        for index, layer in enumerate(module):
            if type(layer) is not nn.Linear:
                return None
            steps += [*(_layers(layer, f"{prefix}{index}.") or []), RELU]
        return steps
    if kind is nn.Sequential:
        steps = []
        for name, child in module.named_children():
            if type(child) is nn.Flatten and (child.start_dim, child.end_dim) == (1, -1):
                steps.append(FLATTEN)
                continue
            found = _layers(child, f"{prefix}{name}.")
            if found is None:
                return None
            steps += found
        return steps
    activation = _activation(module)
    return None if activation is None else [Layer(activation=activation)]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``x`` of shape ``(T, N, in)``; ``weight`` is ``(out, in)``
    (shared by the tasks) or ``(T, out, in)`` (one per task), ``bias`` ``(out,)`` or ``(T, out)``."""
    if weight.dim() == 3:
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(-2), x, weight.transpose(1, 2))
    if bias is None or bias.dim() == 1:
        return F.linear(x, weight, bias)
    return F.linear(x, weight) + bias.unsqueeze(1)


@dataclass(frozen=True)
class StackedMLP:
    """A model made of linear layers and elementwise activations, run on a meta-batch
    ``(tasks, examples, ...)`` with weights shared by the tasks (``(out, in)``) or stacked
    per task (``(tasks, out, in)``).

    ``features`` and ``head`` are the two parts of a ``features``/``head`` model (else
    ``features`` is the whole model and ``head`` empty)."""

    features: tuple[Layer, ...]
    head: tuple[Layer, ...]

    @classmethod
    def of(cls, module: nn.Module) -> StackedMLP | None:
        """The stacked form of ``module``: the standard ``mlp``, an ``nn.Sequential`` of
        ``nn.Linear``, ``nn.Flatten`` and elementwise activations (ReLU, LeakyReLU, Tanh,
        Sigmoid, GELU, SiLU, ELU, Identity), or a ``features``/``head`` model of those parts whose
        forward is ``head(features(x))`` (:class:`~metaplug_torch.models.FeaturesAndHead`);
        ``None`` for any other model."""
        if type(module) is models.FeaturesAndHead:
            features, head = _layers(module.features, "features."), _layers(module.head, "head.")
            if features is None or head is None:
                return None
            return cls(tuple(features), tuple(head))
        whole = _layers(module, "")
        return None if whole is None else cls(tuple(whole), ())

    @property
    def layers(self) -> tuple[Layer, ...]:
        """The whole model's steps."""
        return self.features + self.head

    @staticmethod
    def run(layers: Sequence[Layer], params: Params, x: torch.Tensor) -> torch.Tensor:
        """``layers`` on ``x`` ``(T, N, ...)`` with ``params`` (each shared or with a task axis)."""
        for layer in layers:
            if layer.weight is None:
                assert layer.activation is not None
                x = layer.activation(x)
            else:
                x = linear(x, params[layer.weight], None if layer.bias is None else params[layer.bias])
        return x

    def embed(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """``features`` of ``x`` ``(T, N, ...)``."""
        return self.run(self.features, params, x)

    def __call__(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The whole model on ``x`` ``(T, N, ...)``."""
        return self.run(self.layers, params, x)


def elementwise(rule: InnerRule) -> bool:
    """Whether ``rule`` updates each weight entry on its own (a built-in elementwise rule,
    possibly leaving frozen weights alone), so that it can step stacked weights."""
    while isinstance(rule, FrozenRule):
        rule = rule.inner
    return type(rule) in ELEMENTWISE_RULES


def plan(module: nn.Module, rule: InnerRule) -> StackedMLP | None:
    """The stacked form of ``module`` when ``rule`` is elementwise, else ``None``."""
    return StackedMLP.of(module) if elementwise(rule) else None


def task_losses(problem: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each task's :func:`~metaplug_torch.losses.task_loss` ``(T,)`` of ``outputs`` ``(T, N, ...)``."""
    if problem == "classification":
        tasks = outputs.shape[0]
        losses = F.cross_entropy(outputs.flatten(0, 1), targets.flatten(0, 1), reduction="none")
        return losses.reshape(tasks, -1).mean(1)
    return F.mse_loss(outputs, targets, reduction="none").flatten(1).mean(1)


def task_accuracies(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each task's fraction of rows whose highest score is the target class ``(T,)``."""
    return (outputs.argmax(-1) == targets).to(outputs.dtype).mean(1)


def stacked(params: Params, tasks: int) -> dict[str, torch.Tensor]:
    """Each of ``params`` with a task axis of ``tasks`` copies in front (views: their
    gradients sum back into ``params``)."""
    return {n: p.expand(tasks, *p.shape) for n, p in params.items()}


def inner_loop(
    loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    fast: dict[str, torch.Tensor],
    rule: InnerRule,
    learnables: Params,
    lr: float,
    steps: int,
    *,
    second_order: bool,
) -> dict[str, torch.Tensor]:
    """:func:`metaplug_torch.inner.inner_loop` for every task at once: ``fast`` has a task
    axis and ``loss(fast)`` is the sum of the task losses, so its gradient is every task's
    own. With ``second_order`` the result stays differentiable through the gradients;
    otherwise they are constants. Under ``torch.no_grad`` (evaluation) nothing is kept
    for a meta-gradient."""
    differentiable = torch.is_grad_enabled()
    state = initial_state(rule, fast)
    names = list(fast)
    for _ in range(steps):
        if not differentiable:
            fast = {n: p.detach().requires_grad_() for n, p in fast.items()}
        with torch.enable_grad():
            found = torch.autograd.grad(
                loss(fast), [fast[n] for n in names], create_graph=second_order, materialize_grads=True
            )
        grads = {n: g if second_order else g.detach() for n, g in zip(names, found, strict=True)}
        fast, state = apply_rule(rule, fast, grads, learnables, lr, state)
    return {n: p.detach() for n, p in fast.items()} if not differentiable else fast
