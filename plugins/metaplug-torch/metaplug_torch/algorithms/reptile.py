"""Reptile (Nichol et al. 2018): move the initialisation towards task-adapted weights."""

from __future__ import annotations

import torch

from metaplug.interfaces import EpisodeBatch, OptimizerFactory, TaskSpec
from metaplug_torch.algorithms.gradient import GradientAdaptation, Params
from metaplug_torch.backend import TorchBackend, TorchEpisodes
from metaplug_torch.inner import InnerSGD


class Reptile(GradientAdaptation):
    """Reptile: ``inner_steps`` gradient steps on each support set give ``phi_i``; the outer
    optimizer gets ``theta - mean_i(phi_i)`` as its gradient (with SGD at rate ``eps``, the
    update ``theta + eps (mean phi - theta)``). The reported loss is the query loss at ``phi_i``.
    """

    name = "reptile"

    def __init__(self, backend: TorchBackend | None = None, model: torch.nn.Module | None = None,
                 spec: TaskSpec | None = None, optimizer: OptimizerFactory | None = None, *, inner_lr: float = 0.01, inner_steps: int = 5,
                 test_inner_steps: int | None = None, batching: str = "auto") -> None:
        super().__init__(backend, model, spec, optimizer, inner_lr=inner_lr, inner_steps=inner_steps,
                         test_inner_steps=test_inner_steps, rule=InnerSGD(), batching=batching)

    def _train_task(self, shared: tuple[Params, Params], sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
                    qy: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params, learnables = shared
        fast = self.adapt_task(params, learnables, sx, sy, self.inner_steps, second_order=False)
        loss, acc = self.loss_and_accuracy(self.task_output(params, fast, qx), qy)
        return (loss.detach(), acc.detach(), *(fast[n].detach() for n in self.model.names))

    def meta_gradients(self, data: TorchEpisodes, batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
        tasks = (data.support_x, data.support_y, data.query_x, data.query_y)
        shared = self.evaluation_parameters()
        outputs = self.map_tasks(self._train_task, shared, tasks)
        for (name, param), adapted in zip(self.params.items(), outputs[2:]):
            param.grad = param.detach() - adapted.mean(0)
        return outputs[:2]
