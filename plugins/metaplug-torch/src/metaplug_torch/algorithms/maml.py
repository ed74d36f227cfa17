"""MAML (second and first order), ANIL and Meta-SGD: gradients through the inner loop."""

from __future__ import annotations

import torch

from metaplug.contract.interfaces import EpisodeBatch, OptimizerFactory, TaskSpec
from metaplug_torch.algorithms.gradient import GradientAdaptation, Params, load_inner_rule
from metaplug_torch.backend import TorchBackend, TorchEpisodes
from metaplug_torch.inner import InnerRule


class MAML(GradientAdaptation):
    """Model-Agnostic Meta-Learning (Finn et al. 2017).

    The meta-gradient flows through ``inner_steps`` steps of ``inner_rule`` on each
    task's support set (second order unless ``first_order``). ``inner_rule`` names an
    inner-role optimizer (or is an object with ``init``/``step``, see
    :mod:`metaplug_torch.inner`). ``batching`` picks how tasks are batched: ``auto``,
    ``vmap``, ``loop`` or ``reference`` (see :mod:`metaplug_torch.batching`).
    ``transductive=False`` predicts each query example with the support set in its batch
    (see :class:`~metaplug_torch.algorithms.gradient.GradientAdaptation`).
    """

    name = "maml"

    def __init__(self, backend: TorchBackend | None = None, model: torch.nn.Module | None = None,
                 spec: TaskSpec | None = None, optimizer: OptimizerFactory | None = None, *, inner_lr: float = 0.01, inner_steps: int = 1,
                 test_inner_steps: int | None = None, first_order: bool = False, inner_rule: str | InnerRule = "inner-sgd",
                 batching: str = "auto", transductive: bool = True) -> None:
        self.first_order = bool(first_order)
        super().__init__(backend, model, spec, optimizer, inner_lr=inner_lr, inner_steps=inner_steps,
                         test_inner_steps=test_inner_steps, rule=load_inner_rule(inner_rule), batching=batching,
                         transductive=transductive)

    def _train_task(self, shared: tuple[Params, Params], sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
                    qy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params, learnables = shared
        h_support, h_query = self.task_inputs(params, sx), self.task_inputs(params, qx)
        fast = self.adapt_task(params, learnables, h_support, sy, self.inner_steps,
                                second_order=not self.first_order)
        return self.loss_and_accuracy(self.task_output(params, fast, h_query), qy)

    def meta_gradients(self, data: TorchEpisodes, batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
        tasks = (data.support_x, data.support_y, data.query_x, data.query_y)
        return self.map_tasks(self._train_task, (self.params, self.inner_learnables()), tasks,
                         backward_scale=1.0 / len(data.support_x))


class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017): the inner gradients are treated as constants."""

    name = "fomaml"

    def __init__(self, backend: TorchBackend | None = None, model: torch.nn.Module | None = None,
                 spec: TaskSpec | None = None, optimizer: OptimizerFactory | None = None, *, inner_lr: float = 0.01, inner_steps: int = 1,
                 test_inner_steps: int | None = None, inner_rule: str | InnerRule = "inner-sgd",
                 batching: str = "auto", transductive: bool = True) -> None:
        super().__init__(backend, model, spec, optimizer, inner_lr=inner_lr, inner_steps=inner_steps,
                         test_inner_steps=test_inner_steps, first_order=True, inner_rule=inner_rule,
                         batching=batching, transductive=transductive)


class ANIL(MAML):
    """Almost No Inner Loop (Raghu et al. 2020): MAML whose inner loop adapts only ``head.*``.

    Needs a model with ``features`` and ``head`` submodules (every standard model).
    """

    name = "anil"
    head_only = True


class MetaSGD(MAML):
    """Meta-SGD (Li et al. 2017): MAML with a learned inner rate per parameter entry,
    initialised to ``inner_lr`` and saved as ``inner.<parameter name>``."""

    name = "metasgd"

    def __init__(self, backend: TorchBackend | None = None, model: torch.nn.Module | None = None,
                 spec: TaskSpec | None = None, optimizer: OptimizerFactory | None = None, *, inner_lr: float = 0.01, inner_steps: int = 1,
                 test_inner_steps: int | None = None, first_order: bool = False,
                 inner_rule: str | InnerRule = "inner-metasgd", batching: str = "auto",
                 transductive: bool = True) -> None:
        super().__init__(backend, model, spec, optimizer, inner_lr=inner_lr, inner_steps=inner_steps,
                         test_inner_steps=test_inner_steps, first_order=first_order, inner_rule=inner_rule,
                         batching=batching, transductive=transductive)
