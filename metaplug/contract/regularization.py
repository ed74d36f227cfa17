"""The fine-tuning baseline's regulariser: support loss + lambda * Omega(w) (Li et al. 2018).

``regularization = "l2"``: ``Omega(w) = 1/2 |w|^2`` over the fine-tuned weights (weight
decay). ``"l2-sp"`` (L2 starting point): ``Omega(w) = 1/2 |w - w0|^2`` over the weights
that fine-tuning starts from trained values ``w0``, and ``1/2 |w|^2`` over those it starts
from scratch (a new classification head), as Li et al.'s ``alpha/2 |w_S - w_S^0|^2 +
beta/2 |w_new|^2`` with ``alpha = beta = lambda``. Both backends add the penalty through
its gradient, ``lambda * (w - w0)``, to each fine-tuning step's gradient, which is the
gradient of the regularised loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metaplug.contract.interfaces import InnerRule, apply_rule, initial_state, is_stateful
from metaplug.errors import ConfigError


class PenalisedRule:
    """``rule`` stepping on the gradient of ``loss + strength/2 * sum |w - anchor|^2``:
    ``anchors`` maps weight names to their starting values (tensors of the backend,
    without the task axis the weights may carry); weights without an anchor are pulled
    towards zero."""

    def __init__(self, rule: InnerRule, strength: float, anchors: Mapping[str, Any]) -> None:
        self.inner, self.strength, self.anchors = rule, strength, dict(anchors)

    def init(self, params: Mapping[str, Any], lr: float) -> dict[str, Any]:
        return self.inner.init(params, lr)

    def penalised(self, params: Mapping[str, Any], grads: Mapping[str, Any]) -> dict[str, Any]:
        """``grads`` plus the penalty's gradient ``strength * (w - anchor)``."""
        s = self.strength
        return {
            n: g + s * (params[n] - self.anchors[n]) if n in self.anchors else g + s * params[n]
            for n, g in grads.items()
        }

    def step(
        self, params: Mapping[str, Any], grads: Mapping[str, Any], learnables: Mapping[str, Any], lr: float
    ) -> dict[str, Any]:
        return self.inner.step(params, self.penalised(params, grads), learnables, lr)


class StatefulPenalisedRule(PenalisedRule):
    """:class:`PenalisedRule` around a stateful rule (``inner-adam``...): its state threads through."""

    def init_state(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return initial_state(self.inner, params)

    def step_with_state(
        self,
        params: Mapping[str, Any],
        grads: Mapping[str, Any],
        learnables: Mapping[str, Any],
        lr: Any,
        state: Mapping[str, Any],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        return apply_rule(self.inner, params, self.penalised(params, grads), learnables, lr, state)


def regularised(rule: InnerRule, regularization: str, strength: float, start: Mapping[str, Any]) -> InnerRule:
    """The fine-tuning rule for ``regularization`` (``none``, ``l2`` or ``l2-sp``) at
    ``strength``: ``rule`` itself for ``none``; ``start`` holds the trained starting values
    of the weights that have one (``l2-sp`` anchors them there, the others at zero)."""
    if regularization == "none" or not strength:
        return rule
    cls = StatefulPenalisedRule if is_stateful(rule) else PenalisedRule
    return cls(rule, strength, start if regularization == "l2-sp" else {})


def check_new_head(classification: bool, frozen: frozenset[str]) -> None:
    """Classification fine-tuning trains a new, zero-initialised head: freezing ``head.*``
    in adaptation would leave it at zero (one line naming the way out)."""
    heads = sorted(n for n in frozen if n.startswith("head."))
    if classification and heads:
        raise ConfigError(
            f"finetune trains a new head for each classification task; {', '.join(heads)} cannot be frozen "
            'during adaptation (use freeze_during = "training", or freeze only features.*)'
        )


__all__ = ["PenalisedRule", "StatefulPenalisedRule", "check_new_head", "regularised"]
