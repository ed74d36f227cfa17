"""MAML (second and first order), ANIL and Meta-SGD: gradients through the inner loop."""

from __future__ import annotations

import torch

from metaplug.contract.hyperparameters import FOMAMLOptions, MAMLOptions, MetaSGDOptions
from metaplug.contract.interfaces import EpisodeBatch
from metaplug_torch.algorithms.gradient import GradientMetaLearner, Params
from metaplug_torch.backend import Episodes
from metaplug_torch.stacked import StackedMLP


class MAML(GradientMetaLearner):
    """Model-Agnostic Meta-Learning (Finn et al. 2017).

    The meta-gradient flows through ``inner_steps`` steps of the inner rule on each task's
    support set (second order unless :attr:`first_order`). The rule is ``rule=`` (the host
    passes the one the ``inner_rule`` option names) or, built from Python without it, the
    built-in rule of that name (see :mod:`metaplug_torch.inner`). ``batching`` picks how
    tasks are batched: ``auto``, ``vectorized``, ``loop`` or ``reference`` (see
    :mod:`metaplug_torch.batching`). ``transductive=False`` predicts each query example with
    the support set in its batch (see :class:`~metaplug_torch.algorithms.gradient.GradientMetaLearner`).
    """

    name = "maml"
    Options = MAMLOptions
    options: MAMLOptions

    @property
    def first_order(self) -> bool:
        """Whether the inner gradients are constants for the meta-gradient (the
        ``first_order`` option; FOMAML sets it for good)."""
        return self.options.first_order

    def _train_task(
        self, shared: tuple[Params, Params], sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        params, learnables = shared
        h_support, h_query = self.task_inputs(params, sx), self.task_inputs(params, qx)
        fast = self.adapt_task(
            params, learnables, h_support, sy, self.options.inner_steps, second_order=not self.first_order
        )
        return self.loss_and_accuracy(self.task_output(params, fast, h_query), qy)

    def meta_gradients(self, data: Episodes, batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
        plan = self.stacked_model(MAML, ("_train_task",))
        if plan is not None:
            return self._stacked_meta_gradients(plan, data)
        tasks = (data.support_x, data.support_y, data.query_x, data.query_y)
        return self.map_tasks(
            self._train_task, (self.params, self.inner_learnables()), tasks, backward_scale=1.0 / len(data.support_x)
        )

    def _stacked_meta_gradients(self, plan: StackedMLP, data: Episodes) -> tuple[torch.Tensor, ...]:
        """:meth:`meta_gradients` with every task's fast weights stacked (:mod:`metaplug_torch.stacked`)."""
        params = self.params
        h_support = self.stacked_inputs(plan, params, data.support_x)
        h_query = self.stacked_inputs(plan, params, data.query_x)
        fast = self.stacked_adaptation(
            plan,
            params,
            self.inner_learnables(),
            h_support,
            data.support_y,
            self.options.inner_steps,
            second_order=not self.first_order,
        )
        losses, accuracies = self.stacked_losses(self.stacked_output(plan, params, fast, h_query), data.query_y)
        (losses.sum() * (1.0 / len(data.support_x))).backward()
        return losses.detach(), accuracies.detach()


class FOMAML(MAML):
    """First-order MAML (Finn et al. 2017): the inner gradients are treated as constants."""

    name = "fomaml"
    Options = FOMAMLOptions  # type: ignore[assignment]
    first_order = True


class ANIL(MAML):
    """Almost No Inner Loop (Raghu et al. 2020): MAML whose inner loop adapts only ``head.*``.

    Needs a model with ``features`` and ``head`` submodules (every standard model).
    """

    name = "anil"
    head_only = True


class MetaSGD(MAML):
    """Meta-SGD (Li et al. 2017): MAML with a learned inner rate per parameter entry
    (the ``inner-metasgd`` rule), initialised to ``inner_lr`` and saved as
    ``inner.<parameter name>``."""

    name = "metasgd"
    Options = MetaSGDOptions
