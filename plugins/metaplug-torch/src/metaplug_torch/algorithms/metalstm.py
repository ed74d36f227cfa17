"""The LSTM meta-learner (Ravi and Larochelle 2017): a learned optimizer whose cell state
is the learner's parameters."""

from __future__ import annotations

import math

import torch

from metaplug.contract.hyperparameters import MetaLSTMOptions
from metaplug.contract.interfaces import EpisodeBatch
from metaplug_torch.algorithms.gradient import GradientMetaLearner, Params
from metaplug_torch.backend import Episodes
from metaplug_torch.losses import task_loss

PREFIX = "metalstm."
PREPROCESS_P = 10.0
"""Andrychowicz et al.'s preprocessing constant ``p`` (the authors' code: ``P = 10``)."""

State = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""The meta-learner's recurrent state: the first LSTM's ``(h, c)``, ``(hidden, P)``, and the
previous forget and input gate pre-activations ``(P,)``; one column per learner parameter entry."""


def preprocess(x: torch.Tensor, p: float = PREPROCESS_P) -> torch.Tensor:
    """``(2, ...)``: ``(log|x| / p, sign x)`` where ``|x| >= e^-p``, else ``(-1, e^p x)``
    (Andrychowicz et al. 2016, appendix A; the authors' ``preprocess``)."""
    big = x.abs() > math.exp(-p)
    first = torch.where(big, x.abs().clamp(min=math.exp(-p)).log() / p, -torch.ones_like(x))
    second = torch.where(big, x.sign(), x * math.exp(p))
    return torch.stack([first, second])


def meta_lstm_step(
    meta: Params, theta: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor, state: State | None
) -> tuple[torch.Tensor, State]:
    """One update of the flat learner parameters ``theta`` ``(P,)`` from their gradient
    ``grad`` and the loss (both constants): the first LSTM reads the preprocessed loss and
    gradient of each entry, then the meta-LSTM cell

        f_t = W_F [h_t, theta_{t-1}, f_{t-1}] + b_F,  i_t = W_I [h_t, theta_{t-1}, i_{t-1}] + b_I,
        theta_t = sigmoid(f_t) * theta_{t-1} - sigmoid(i_t) * grad_t.

    The entries run along the last axis, so that each gate is one contiguous block: with the
    entries first, every gate was a strided slice of 20 numbers per entry and torch's
    sigmoid and tanh on those slices took 40% of a conv4 Meta-LSTM step.
    """
    size = theta.shape[0]
    hidden_size = meta[PREFIX + "lstm.bias"].shape[0] // 4
    if state is None:
        zeros = theta.new_zeros(hidden_size, size)
        state = (zeros, zeros, theta.new_zeros(size), theta.new_zeros(size))
    h, c, f_prev, i_prev = state
    inputs = torch.cat([preprocess(loss).unsqueeze(1).expand(2, size), preprocess(grad), h])
    gates = torch.addmm(meta[PREFIX + "lstm.bias"].unsqueeze(1), meta[PREFIX + "lstm.weight"], inputs)
    i, f, g, o = gates.chunk(4)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    forget = cell_gate(meta, "forget", h, theta, f_prev)
    rate = cell_gate(meta, "input", h, theta, i_prev)
    return torch.sigmoid(forget) * theta - torch.sigmoid(rate) * grad, (h, c, forget, rate)


def cell_gate(meta: Params, name: str, h: torch.Tensor, theta: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    """A meta-LSTM cell gate's pre-activation ``W [h, theta, previous] + b``, ``(P,)``."""
    weight = meta[PREFIX + name + ".weight"]
    hidden_size = h.shape[0]
    return (
        weight[:hidden_size] @ h
        + weight[hidden_size] * theta
        + weight[hidden_size + 1] * previous
        + meta[PREFIX + name + ".bias"]
    )


class MetaLSTM(GradientMetaLearner):
    """The LSTM meta-learner (Ravi and Larochelle 2017).

    The learner is the model (any registered model); its initial parameters are the
    meta-LSTM's initial cell state (the model's meta-parameters). Each of ``inner_steps``
    updates computes the learner's support loss and gradient at the current parameters,
    treats both as constants (the paper drops the second derivatives), preprocesses them as
    Andrychowicz et al. (``p = 10``) and feeds them, entry by entry, to a two-layer
    coordinate-wise LSTM: a standard LSTM of ``hidden_size`` units, then the meta-LSTM cell
    whose forget gate acts as a learned weight decay and whose input gate as a learned
    learning rate (:func:`meta_lstm_step`). The meta-gradient of the query loss flows back
    through the unrolled updates into the LSTMs and the initial parameters.

    Initialisation as the authors' code: every LSTM weight U(-0.01, 0.01), the forget bias
    U(4, 5) and the input bias U(-5, -4), so training starts close to gradient descent with
    a small rate. Saved as ``metalstm.*``. Each update uses the whole support set (the
    authors' batch size equals the support set in their 5-way configurations).

    Batch norm: metaplug's models normalise with each batch's own statistics, so the
    learner's support passes use the support statistics and its query pass the query's
    (the paper's meta-training); ``transductive=False`` predicts each query example with
    the support set in its batch, the nearest to the paper's meta-test use of statistics
    gathered on the support set.
    """

    name = "metalstm"
    Options = MetaLSTMOptions  # type: ignore[assignment]
    options: MetaLSTMOptions  # type: ignore[assignment]

    def extra_parameters(self) -> dict[str, torch.Tensor]:
        hidden = self.options.hidden_size

        def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
            return torch.empty(*shape, dtype=self.dtype, device=self.device).uniform_(low, high)

        return {
            PREFIX + "lstm.weight": uniform(-0.01, 0.01, 4 * hidden, 4 + hidden),
            PREFIX + "lstm.bias": uniform(-0.01, 0.01, 4 * hidden),
            PREFIX + "forget.weight": uniform(-0.01, 0.01, hidden + 2),
            PREFIX + "forget.bias": uniform(4.0, 5.0, 1),
            PREFIX + "input.weight": uniform(-0.01, 0.01, hidden + 2),
            PREFIX + "input.bias": uniform(-5.0, -4.0, 1),
        }

    def inner_learnables(self) -> Params:
        """The meta-learner's parameters (``self.extra``)."""
        return dict(self.extra)

    def adapt_task(
        self,
        params: Params,
        learnables: Params,
        h_support: torch.Tensor,
        sy: torch.Tensor,
        steps: int,
        second_order: bool,
    ) -> Params:
        """The learner's parameters after ``steps`` meta-LSTM updates on the support set
        (differentiable back to the meta-parameters through the updates, never through the
        gradients: ``second_order`` is ignored)."""
        names = self.adapted_names()
        shapes = [params[n].shape for n in names]
        sizes = [params[n].numel() for n in names]

        def support_loss(flat: torch.Tensor) -> torch.Tensor:
            fast = dict(zip(names, (p.reshape(s) for p, s in zip(flat.split(sizes), shapes, strict=True)), strict=True))
            return task_loss(self.spec.problem, self.task_output(params, fast, h_support), sy)

        theta = torch.cat([params[n].reshape(-1) for n in names])
        frozen = self.freezing.adaptation
        keep = torch.cat(
            [torch.full((size,), n in frozen, device=theta.device) for n, size in zip(names, sizes, strict=True)]
        )
        state: State | None = None
        for _ in range(steps):
            point = theta.detach()
            if self.mode == "vectorized":
                grad, loss = torch.func.grad_and_value(support_loss)(point)
            else:
                with torch.enable_grad():
                    point.requires_grad_()
                    loss = support_loss(point)
                    (grad,) = torch.autograd.grad(loss, point)
            stepped, state = meta_lstm_step(learnables, theta, grad.detach(), loss.detach(), state)
            theta = torch.where(keep, theta, stepped) if frozen else stepped  # frozen weights as they came
        pieces = theta.split(sizes)
        return {n: p.reshape(s) for n, p, s in zip(names, pieces, shapes, strict=True)}

    def _train_task(
        self, shared: tuple[Params, Params], sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        params, learnables = shared
        fast = self.adapt_task(params, learnables, self.task_inputs(params, sx), sy, self.options.inner_steps, False)
        return self.loss_and_accuracy(self.task_output(params, fast, self.task_inputs(params, qx)), qy)

    def meta_gradients(self, data: Episodes, batch: EpisodeBatch) -> tuple[torch.Tensor, ...]:
        tasks = (data.support_x, data.support_y, data.query_x, data.query_y)
        return self.map_tasks(
            self._train_task, (self.params, self.inner_learnables()), tasks, backward_scale=1.0 / len(data.support_x)
        )
