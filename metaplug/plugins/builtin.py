"""The host's own components, registered through the same hooks as any plugin."""

from __future__ import annotations

from metaplug import Register, hookimpl
from metaplug.contract.records import Component


@hookimpl
def register_task_samplers(register: Register) -> None:
    register(
        Component(
            name="sinusoid",
            summary="Sinusoid regression (Finn et al. 2017): amplitude U[0.1, 5], phase U[0, pi].",
            target="metaplug.tasks.sinusoid:SinusoidSampler",
            problems=("regression",),
        )
    )
    register(
        Component(
            name="omniglot",
            summary="Omniglot N-way K-shot characters, 28x28, rotations as extra classes.",
            target="metaplug.tasks.omniglot:OmniglotSampler",
            problems=("classification",),
        )
    )
