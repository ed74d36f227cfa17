"""Frozen weights: model weights, named by globs, that training and/or adaptation leave alone.

Every standard algorithm has the options ``freeze`` (globs of the layout names of
``docs/models.md``, matched with :func:`fnmatch.fnmatchcase`, so ``features.0.*`` names
every weight of the first block) and ``freeze_during`` (``both``, ``training`` or
``adaptation``; :data:`~metaplug.contract.hyperparameters.FREEZE_DURING`). A backend
plugin's algorithm base class resolves them once with :meth:`Freezing.resolve`, then

- in training, gives the outer optimizer no gradient for :attr:`Freezing.training`
  (``torch.optim`` and the TensorFlow plugin's optimizers skip such weights entirely, so
  they stay bitwise unchanged and get no optimizer state);
- in adaptation, runs its inner rule through :meth:`Freezing.rule`, which returns the
  weights of :attr:`Freezing.adaptation` as they came in.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from metaplug.contract.interfaces import InnerRule, apply_rule, initial_state, is_stateful
from metaplug.errors import ConfigError


def frozen_names(patterns: Iterable[str], names: Sequence[str]) -> tuple[str, ...]:
    """The ``names`` that any glob of ``patterns`` matches, in their order; a pattern that
    matches none is a one-line :class:`ConfigError` (a typo would otherwise freeze nothing)."""
    found: set[str] = set()
    for pattern in patterns:
        matched = fnmatch.filter(names, pattern)
        if not matched:
            shown = ", ".join(names[:6]) + (" ..." if len(names) > 6 else "")
            raise ConfigError(f"freeze pattern {pattern!r} matches no model weight; the model has {shown}")
        found.update(matched)
    return tuple(n for n in names if n in found)


@dataclass(frozen=True)
class Freezing:
    """The weights kept fixed in training and in adaptation."""

    training: frozenset[str] = frozenset()
    adaptation: frozenset[str] = frozenset()

    @classmethod
    def resolve(cls, patterns: Iterable[str], during: str, names: Sequence[str]) -> Freezing:
        """From the ``freeze`` and ``freeze_during`` options and the model's weight names."""
        frozen = frozenset(frozen_names(patterns, names))
        return cls(
            training=frozen if during in ("both", "training") else frozenset(),
            adaptation=frozen if during in ("both", "adaptation") else frozenset(),
        )

    def rule(self, rule: InnerRule) -> InnerRule:
        """``rule``, leaving the weights frozen in adaptation unchanged (itself if there are
        none); stateful as ``rule`` is (:class:`~metaplug.contract.interfaces.StatefulInnerRule`)."""
        if not self.adaptation:
            return rule
        return (StatefulFrozenRule if is_stateful(rule) else FrozenRule)(rule, self.adaptation)


class FrozenRule:
    """An inner rule that steps every weight but ``frozen`` with ``rule`` and returns the
    frozen ones as given (the same tensors: bitwise unchanged). The rule's own learnables
    (Meta-SGD's rates) exist only for the weights it steps."""

    def __init__(self, rule: InnerRule, frozen: Iterable[str]) -> None:
        self.inner, self.frozen = rule, frozenset(frozen)

    def init(self, params: Mapping[str, Any], lr: float) -> dict[str, Any]:
        return self.inner.init({n: p for n, p in params.items() if n not in self.frozen}, lr)

    def step(
        self, params: Mapping[str, Any], grads: Mapping[str, Any], learnables: Mapping[str, Any], lr: float
    ) -> dict[str, Any]:
        free = [n for n in params if n not in self.frozen]
        stepped = self.inner.step({n: params[n] for n in free}, {n: grads[n] for n in free}, learnables, lr)
        return {n: params[n] if n in self.frozen else stepped[n] for n in params}


class StatefulFrozenRule(FrozenRule):
    """:class:`FrozenRule` around a stateful rule: the state covers every weight (algorithms
    may look it up by name, MAML++ does) and a frozen weight's state is passed on unchanged."""

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
        free = [n for n in params if n not in self.frozen]
        stepped, after = apply_rule(
            self.inner,
            {n: params[n] for n in free},
            {n: grads[n] for n in free},
            learnables,
            lr,
            {n: state[n] for n in free if n in state},
        )
        return {n: params[n] if n in self.frozen else stepped[n] for n in params}, {**state, **after}


__all__ = ["Freezing", "FrozenRule", "StatefulFrozenRule", "frozen_names"]
