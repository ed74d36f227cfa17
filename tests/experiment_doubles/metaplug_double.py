"""A framework-free plugin for the experiment runner's tests: backend ``numpy`` and
``linear-maml``, MAML on a linear model over the features ``[sin x, cos x, 1]``.

Every sinusoid ``A sin(x - phase)`` is exactly linear in these features, so the
algorithm really learns (its adapted loss falls), with analytic second-order
meta-gradients: after inner steps ``w_k = w_{k-1} - a g_s(w_{k-1})`` the outer
gradient is ``J^T g_q(w_K)`` with ``J = prod_k (I - a H_s)`` (``H_s`` the support
Hessian). Tests put this folder on ``sys.path`` so that discovery finds the
``metaplug_double-0.1.dist-info`` entry point beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

import metaplug
from metaplug import Options, option
from metaplug.contract.interfaces import EpisodeBatch, ModelSpec, TaskSpec
from metaplug.errors import ConfigError


@metaplug.hookimpl
def register_backends(register):
    register(metaplug.Component("numpy", "Numpy test double.", target="metaplug_double:NumpyBackend"))


@metaplug.hookimpl
def register_algorithms(register):
    register(
        metaplug.Component(
            "linear-maml",
            "MAML on a linear sin/cos model (test double).",
            target="metaplug_double:LinearMAML",
            backends=("numpy",),
            problems=("regression",),
        )
    )


@metaplug.hookimpl
def register_optimizers(register):
    register(
        metaplug.Component("adam", "Adam (numpy).", target="metaplug_double:adam", backends=("numpy",), role="outer")
    )
    register(metaplug.Component("sgd", "SGD (numpy).", target="metaplug_double:sgd", backends=("numpy",), role="outer"))
    register(
        metaplug.Component(
            "inner-sgd", "Inner SGD (numpy).", target="metaplug_double:sgd", backends=("numpy",), role="inner"
        )
    )


@metaplug.hookimpl
def register_models(register):
    register(
        metaplug.Component(
            "mlp", "Linear sin/cos weights (test double).", target="metaplug_double:LinearModel", backends=("numpy",)
        )
    )


class LinearModel:
    """The three weights of the linear model, drawn from the backend's generator."""

    @classmethod
    def build(cls, backend: NumpyBackend, spec: ModelSpec) -> np.ndarray:
        return backend.build_model(spec)


class NumpyBackend:
    name = "numpy"
    models = ("mlp",)

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def to_tensors(self, batch: EpisodeBatch) -> EpisodeBatch:
        return batch

    def build_model(self, spec: ModelSpec) -> np.ndarray:
        return self.rng.normal(scale=0.1, size=3)


def features(x: np.ndarray) -> np.ndarray:
    """``(..., N, 1)`` inputs → ``(..., N, 3)`` features."""
    return np.concatenate([np.sin(x), np.cos(x), np.ones_like(x)], axis=-1)


def loss_grad_hessian(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    phi = features(x.astype(np.float64))
    residual = phi @ w - y[:, 0]
    n = len(residual)
    return float(residual @ residual / n), 2 / n * phi.T @ residual, 2 / n * phi.T @ phi


class Adam:
    def __init__(self, lr: float, beta1: float, beta2: float, eps: float) -> None:
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m, self.v, self.t = np.zeros(3), np.zeros(3), 0

    def step(self, w: np.ndarray, grad: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad**2
        m_hat, v_hat = self.m / (1 - self.beta1**self.t), self.v / (1 - self.beta2**self.t)
        return w - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def state(self) -> dict[str, np.ndarray]:
        return {"m": self.m, "v": self.v, "t": np.array(self.t)}

    def load(self, state: Mapping[str, np.ndarray]) -> None:
        self.m, self.v, self.t = np.array(state["m"]), np.array(state["v"]), int(state["t"])


class SGD(Adam):
    def step(self, w: np.ndarray, grad: np.ndarray) -> np.ndarray:
        self.t += 1
        return w - self.lr * grad


def adam(params: Any, *, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> Adam:
    return Adam(lr, beta1, beta2, eps)


def sgd(params: Any, *, lr: float) -> SGD:
    return SGD(lr, 0.0, 0.0, 0.0)


class Adapted:
    def __init__(self, w: np.ndarray) -> None:
        self.w = w

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (features(np.asarray(x, np.float64)) @ self.w)[:, None].astype(np.float32)


@dataclass(frozen=True)
class LinearMAMLOptions(Options):
    inner_lr: float = option(0.01, minimum=0, exclusive=True)
    inner_steps: int = option(1, minimum=1)
    test_inner_steps: int | None = option(None, minimum=0)
    first_order: bool = option(False)


class LinearMAML:
    """MAML with exact second-order gradients on a linear model."""

    Options = LinearMAMLOptions

    def __init__(
        self, backend: NumpyBackend, model: np.ndarray, spec: TaskSpec, optimizer: Any, **options: Any
    ) -> None:
        if spec.problem != "regression":
            raise ConfigError("linear-maml supports regression only")
        o = self.Options.parse(options, owner="algorithm 'linear-maml'")
        self.w = np.asarray(model, np.float64)
        self.optimizer = optimizer([self.w])
        self.inner_lr, self.inner_steps, self.first_order = o.inner_lr, o.inner_steps, o.first_order
        self.test_inner_steps = o.inner_steps if o.test_inner_steps is None else o.test_inner_steps

    def _inner(self, x: np.ndarray, y: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
        w, jacobian = self.w.copy(), np.eye(3)
        for _ in range(steps):
            _, grad, hessian = loss_grad_hessian(w, x, y)
            w = w - self.inner_lr * grad
            if not self.first_order:
                jacobian = (np.eye(3) - self.inner_lr * hessian) @ jacobian
        return w, jacobian

    def meta_train_step(self, batch: EpisodeBatch) -> dict[str, float]:
        losses, grads = [], []
        for t in range(batch.num_tasks):
            adapted, jacobian = self._inner(batch.support_x[t], batch.support_y[t], self.inner_steps)
            loss, grad, _ = loss_grad_hessian(adapted, batch.query_x[t], batch.query_y[t])
            losses.append(loss)
            grads.append(jacobian.T @ grad)
        self.w = self.optimizer.step(self.w, np.mean(grads, axis=0))
        return {"loss": float(np.mean(losses))}

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray, steps: int | None = None) -> Adapted:
        return Adapted(self._inner(support_x, support_y, self.test_inner_steps if steps is None else steps)[0])

    def evaluate(self, batch: EpisodeBatch, steps: int | None = None) -> dict[str, np.ndarray]:
        steps = self.test_inner_steps if steps is None else steps
        before, after = [], []
        for t in range(batch.num_tasks):
            before.append(loss_grad_hessian(self.w, batch.query_x[t], batch.query_y[t])[0])
            adapted = self._inner(batch.support_x[t], batch.support_y[t], steps)[0]
            after.append(loss_grad_hessian(adapted, batch.query_x[t], batch.query_y[t])[0])
        return {"loss": np.array(after), "loss_before": np.array(before)}

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {"model.weight": self.w.copy()}
        state.update({f"optimizer.{k}": np.asarray(v).copy() for k, v in self.optimizer.state().items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if state["model.weight"].shape != (3,):
            raise ValueError(f"model.weight has shape {state['model.weight'].shape}, expected (3,)")
        self.w = np.array(state["model.weight"], np.float64)
        self.optimizer.load({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("optimizer.")})
