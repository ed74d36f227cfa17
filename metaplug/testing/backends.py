"""Conformance checks for backends: the instance, the standard models and seeding."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from metaplug.contract.interfaces import Backend, ModelSpec, TaskSpec
from metaplug.testing.components import ComponentConformance
from metaplug.testing.harness import build_algorithm
from metaplug.testing.layouts import conv4_layout, mlp_layout, model_weights
from metaplug.testing.tasks import easy_sampler

STANDARD_MODELS = ("mlp", "conv4")
IMAGES = TaskSpec("classification", (1, 28, 28), 5, num_classes=20, default_model="conv4")


class BackendConformance(ComponentConformance):
    """Subclass with ``backend = "name"``. Weight layouts are read through
    :attr:`reference_algorithm`'s ``state_dict()``, the one place they surface as arrays."""

    kind: ClassVar[str] = "backends"
    reference_algorithm: ClassVar[str] = "maml"
    """An algorithm of this backend that stores the model as ``model.*``."""
    optimizer: ClassVar[str] = "adam"
    """An outer optimizer of this backend."""

    @classmethod
    def component_name(cls) -> str:
        return str(cls.backend)

    def instance(self) -> Any:
        return self.load()()

    def state(self, spec: TaskSpec, seed: int) -> dict[str, np.ndarray]:
        algorithm = build_algorithm(
            self.reference_algorithm, str(self.backend), spec, seed=seed, optimizer=self.optimizer
        )
        return algorithm.state_dict()

    def test_instance_follows_the_backend_interface(self) -> None:
        backend = self.instance()
        assert isinstance(backend, Backend)
        assert backend.name == self.backend, f"the instance is named {backend.name!r}, registered as {self.backend!r}"
        missing = [m for m in STANDARD_MODELS if m not in backend.models]
        assert not missing, f"every backend builds the standard models (docs/models.md); missing {missing}"

    def test_builds_models_and_converts_episodes(self) -> None:
        backend = self.instance()
        for problem in ("regression", "classification"):
            sampler = easy_sampler(problem)
            spec = sampler.spec
            assert backend.build_model(ModelSpec("mlp", spec.input_shape, spec.output_size)) is not None
            assert backend.to_tensors(sampler.sample(2)) is not None
        assert backend.build_model(ModelSpec("conv4", IMAGES.input_shape, IMAGES.output_size)) is not None

    def test_standard_models_follow_the_documented_layout(self) -> None:
        sinusoid = easy_sampler("regression").spec
        assert model_weights(self.state(sinusoid, 0)) == mlp_layout(1, 1), "mlp weights differ from docs/models.md"
        assert model_weights(self.state(IMAGES, 0)) == conv4_layout(1, 28, 5), (
            "conv4 weights differ from docs/models.md"
        )

    def test_seed_makes_initialisation_reproducible(self) -> None:
        spec = easy_sampler("regression").spec
        first, again, other = self.state(spec, 7), self.state(spec, 7), self.state(spec, 8)
        for key in first:
            if key.startswith("model."):
                np.testing.assert_array_equal(first[key], again[key], err_msg=f"{key} differs under one seed")
        assert any(not np.array_equal(first[k], other[k]) for k in first if k.startswith("model.")), (
            "seeds 7 and 8 initialise identical weights"
        )
