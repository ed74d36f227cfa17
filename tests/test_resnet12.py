"""``resnet12`` under every algorithm on both backends (narrow channels, 16x16 random
images: seconds), adaptation that lowers MAML's query loss, and torch's batching
choices for it (``auto`` and an exact second-order meta-gradient under ``vectorized``).
The model's cross-backend parity is in ``test_parity_resnet12.py``."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import numpy as np
import pytest

from metaplug.contract.interfaces import EpisodeBatch, ModelSpec, TaskSpec
from metaplug.plugins.discovery import registry

SPEC = TaskSpec("classification", (1, 16, 16), 3, num_classes=12, default_model="resnet12")
MODEL = ModelSpec("resnet12", SPEC.input_shape, SPEC.output_size, {"channels": (4, 4, 4, 8)})
ALGORITHMS: dict[str, dict[str, Any]] = {
    "maml": {"inner_lr": 0.1, "inner_steps": 1},
    "fomaml": {"inner_lr": 0.1, "inner_steps": 1},
    "anil": {"inner_lr": 0.1, "inner_steps": 1},
    "metasgd": {"inner_lr": 0.1, "inner_steps": 1},
    "reptile": {"inner_lr": 0.1, "inner_steps": 2},
    "protonet": {},
    "finetune": {"inner_lr": 0.1, "test_inner_steps": 2},
}


def synthetic_batch(seed: int, tasks: int = 2, shots: int = 1, queries: int = 2) -> EpisodeBatch:
    """Episodes whose classes are noisy copies of one random image each (learnable from one shot)."""
    rng = np.random.default_rng(seed)
    ways, shape = SPEC.output_size, SPEC.input_shape
    prototypes = rng.uniform(0, 1, size=(tasks, ways, *shape))

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.tile(np.arange(ways), (tasks, per_class))
        x = prototypes[np.arange(tasks)[:, None], labels] + 0.3 * rng.normal(size=(*labels.shape, *shape))
        return x.astype(np.float32), labels.astype(np.int64)

    (support_x, support_y), (query_x, query_y) = draw(shots), draw(queries)
    classes = np.stack([rng.choice(SPEC.num_classes, ways, replace=False) for _ in range(tasks)])
    return EpisodeBatch(support_x, support_y, query_x, query_y, "classification", classes)


def build(backend_name: str, name: str, optimizer: str = "adam", lr: float = 1e-3, **hyper: Any) -> Any:
    if importlib.util.find_spec(backend_name) is None:
        pytest.skip(f"{backend_name} is not installed")
    reg = registry()
    try:
        backend = reg.load("backends", backend_name)(device="cpu")
    except Exception as error:  # the plugin is not installed
        pytest.skip(f"backend {backend_name!r}: {error}")
    backend.seed(0)
    outer = functools.partial(reg.load("optimizers", optimizer, backend=backend_name), lr=lr)
    return reg.load("algorithms", name, backend=backend_name)(
        backend=backend, model=backend.build_model(MODEL), spec=SPEC, optimizer=outer, **{**ALGORITHMS[name], **hyper}
    )


@pytest.mark.parametrize(
    "backend_name",
    # TensorFlow traces a graph per algorithm (about 45 s on 2 cores); its MAML and
    # ProtoNets on resnet12 run in the default suite through the parity tests
    ["torch", pytest.param("tensorflow", marks=pytest.mark.slow)],
)
def test_every_algorithm_trains_and_evaluates_resnet12(backend_name):
    batch, test = synthetic_batch(1), synthetic_batch(2)
    for name in ALGORITHMS:
        algorithm = build(backend_name, name)
        metrics = algorithm.meta_train_step(batch)
        assert metrics and all(np.isfinite(v) for v in metrics.values()), (name, metrics)
        results = algorithm.evaluate(test)
        assert np.all(np.isfinite(results["loss"])) and np.all(np.isfinite(results["accuracy"])), (name, results)
        predictions = np.asarray(algorithm.adapt(test.support_x[0], test.support_y[0]).predict(test.query_x[0]))
        assert predictions.shape == (test.query_x.shape[1], SPEC.output_size), name


@pytest.mark.parametrize("backend_name", ["torch", "tensorflow"])
def test_maml_adaptation_lowers_the_query_loss_on_resnet12(backend_name):
    results = build(backend_name, "maml", inner_lr=0.1, test_inner_steps=5).evaluate(synthetic_batch(3, tasks=4))
    assert np.mean(results["loss"]) < 0.9 * np.mean(results["loss_before"]), results


def test_torch_auto_batching_and_exact_second_order_maml_under_vmap():
    pytest.importorskip("metaplug_torch")
    from metaplug_torch.batching import resolve

    model = build("torch", "maml").model
    assert resolve("auto", model, "cpu") == "loop"  # convolutions: one task at a time on the CPU
    assert resolve("auto", model, "cuda") == "vectorized"  # its batch norm is exact under vmap
    batch = synthetic_batch(4, tasks=3)
    steps = {}
    for mode in ("loop", "vectorized", "reference"):
        algorithm = build("torch", "maml", optimizer="sgd", lr=1.0, inner_steps=2, batching=mode)
        before = {k: np.array(v, copy=True) for k, v in algorithm.state_dict().items()}
        algorithm.meta_train_step(batch)
        after = algorithm.state_dict()
        steps[mode] = {k: before[k] - np.asarray(after[k]) for k in before if k.startswith("model.")}
    largest = max(float(np.abs(g).max()) for g in steps["reference"].values())
    assert largest > 0
    for mode in ("loop", "vectorized"):
        for key, expected in steps["reference"].items():
            what = f"{mode} {key}"
            np.testing.assert_allclose(steps[mode][key], expected, rtol=1e-4, atol=1e-5 * largest, err_msg=what)
