"""``recompute_inner``: checkpointed second-order inner steps give the stored version's
meta-gradient (float64, both backends) and run in the per-task modes on torch."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

from metaplug.contract.interfaces import EpisodeBatch, ModelSpec, TaskSpec
from metaplug.errors import ConfigError
from metaplug.plugins.discovery import registry

SPEC = TaskSpec("classification", (1, 16, 16), 3, num_classes=3, default_model="conv4")
MODEL = ModelSpec("conv4", (1, 16, 16), 3, {"filters": 4})
MLP_SPEC = TaskSpec("regression", (1,), 1, default_model="mlp")
MLP = ModelSpec("mlp", (1,), 1, {"hidden": (8, 8)})
RESNET12 = ModelSpec(
    "resnet12", (1, 16, 16), 3, {"channels": (2, 3, 3, 4), "drop_rate": 0.3, "dropblock_size": 2, "dropblock_ramp": 1}
)
"""Dropout and DropBlock at full rate from the first step: every forward pass draws masks."""


def batch(spec: TaskSpec, seed: int = 0, tasks: int = 2) -> EpisodeBatch:
    rng = np.random.default_rng(seed)
    if spec.problem == "regression":
        x = rng.uniform(-5, 5, size=(tasks, 10, 1))
        return EpisodeBatch(x[:, :5], np.sin(x[:, :5]), x[:, 5:], np.sin(x[:, 5:]), problem="regression")
    labels = np.tile(np.arange(3), (tasks, 2))
    return EpisodeBatch(
        support_x=rng.normal(size=(tasks, 6, 1, 16, 16)),
        support_y=labels,
        query_x=rng.normal(size=(tasks, 6, 1, 16, 16)),
        query_y=labels,
        problem="classification",
    )


def build(backend: str, name: str, model: str = "conv4", **hyper: Any) -> Any:
    """``name`` on ``backend`` in float64 with seed 0's weights and SGD at rate 1 (so a
    step's parameter change is the meta-gradient)."""
    reg = registry()
    sgd = functools.partial(reg.load("optimizers", "sgd", backend=backend), lr=1.0)
    algorithm_class = reg.load("algorithms", name, backend=backend)
    spec, model_spec = {"conv4": (SPEC, MODEL), "mlp": (MLP_SPEC, MLP), "resnet12": (SPEC, RESNET12)}[model]
    if backend == "torch":
        instance = reg.load("backends", "torch")(device="cpu")
        instance.seed(0)
        built = instance.build_model(model_spec).double()
    else:
        instance = reg.load("backends", "tensorflow")(device="cpu", dtype="float64")
        instance.seed(0)
        built = instance.build_model(model_spec)
    return algorithm_class(backend=instance, model=built, spec=spec, optimizer=sgd, **hyper)


def meta_gradient(algorithm: Any) -> dict[str, np.ndarray]:
    before = {k: np.array(v) for k, v in algorithm.state_dict().items() if not k.startswith("optimizer.")}
    algorithm.meta_train_step(batch(algorithm.spec))
    after = algorithm.state_dict()
    return {k: before[k] - np.asarray(after[k]) for k in before}


SLOW = pytest.mark.slow  # TensorFlow traces a float64 conv4 step for a minute or more
CASES = [
    ("torch", "maml", "loop", "conv4"),
    ("torch", "maml", "reference", "conv4"),
    ("torch", "anil", "loop", "conv4"),
    ("torch", "metasgd", "auto", "conv4"),
    ("tensorflow", "maml", "vectorized", "mlp"),
    ("tensorflow", "metasgd", "loop", "mlp"),
    pytest.param("tensorflow", "maml", "loop", "conv4", marks=SLOW),
    pytest.param("tensorflow", "maml", "vectorized", "conv4", marks=SLOW),
    pytest.param("tensorflow", "anil", "loop", "conv4", marks=SLOW),
    pytest.param("tensorflow", "metasgd", "auto", "conv4", marks=SLOW),
]


@pytest.mark.parametrize(("backend", "name", "batching", "model"), CASES)
def test_recomputed_inner_steps_give_the_stored_meta_gradient(
    backend: str, name: str, batching: str, model: str
) -> None:
    pytest.importorskip("torch" if backend == "torch" else "tensorflow")
    hyper = {"model": model, "inner_lr": 0.1, "inner_steps": 3, "batching": batching}
    stored = meta_gradient(build(backend, name, **hyper))
    recomputed = meta_gradient(build(backend, name, recompute_inner=True, **hyper))
    assert set(stored) == set(recomputed)
    largest = max(float(np.abs(g).max()) for g in stored.values())
    assert largest > 1e-3  # a real gradient, not zeros on both sides
    for key, expected in stored.items():
        np.testing.assert_allclose(recomputed[key], expected, rtol=1e-10, atol=1e-12 * largest, err_msg=key)


@pytest.mark.parametrize("backend", ["torch", pytest.param("tensorflow", marks=SLOW)])
def test_recomputed_steps_draw_the_stored_dropout_and_dropblock_masks(backend: str) -> None:
    """ResNet-12's DropBlock draws its masks from the forward pass's number within the task:
    a recomputed step must draw its first pass's masks again, not the next numbers'."""
    pytest.importorskip("torch" if backend == "torch" else "tensorflow")
    hyper = {"model": "resnet12", "inner_lr": 0.1, "inner_steps": 2, "batching": "loop"}
    stored = meta_gradient(build(backend, "maml", **hyper))
    recomputed = meta_gradient(build(backend, "maml", recompute_inner=True, **hyper))
    largest = max(float(np.abs(g).max()) for g in stored.values())
    assert largest > 1e-3
    for key, expected in stored.items():
        np.testing.assert_allclose(recomputed[key], expected, rtol=1e-10, atol=1e-12 * largest, err_msg=key)


def test_tensorflow_recomputation_is_traced_with_the_first_runs_forward_numbers() -> None:
    """The quick check of the TensorFlow case above: the forward passes a recomputed step
    makes in the backward pass get the numbers (and the task) of its first run."""
    pytest.importorskip("tensorflow")
    import tensorflow as tf

    from metaplug_tensorflow.algorithms.base import recomputed
    from metaplug_tensorflow.models import meta_training, task_forwards, training_forward

    seen: list[tuple[Any, int]] = []

    def step(w: Any) -> list[Any]:
        drawn = training_forward()
        assert drawn is not None
        seen.append((int(drawn[1]), drawn[2]))
        return [w * w]

    w = tf.constant(3.0)
    with meta_training(0, tf.constant(0)), task_forwards(4):  # as in a task's meta-gradient
        with tf.GradientTape() as tape:
            tape.watch(w)
            once = recomputed(step)(w)[0]
            twice = recomputed(step)(once)[0]
            training_forward()  # the query's forward pass: the recomputations come after it
        gradient = tape.gradient(twice, w)
    assert float(gradient) == pytest.approx(4 * 3.0**3)
    assert seen == [(4, 0), (4, 1), (4, 1), (4, 0)]  # two steps, then recomputed backwards


def test_recompute_differs_from_first_order() -> None:
    """The checked gradient is second order: FOMAML's differs from it."""
    pytest.importorskip("torch")
    hyper = {"inner_lr": 0.1, "inner_steps": 3, "batching": "loop"}
    recomputed = meta_gradient(build("torch", "maml", recompute_inner=True, **hyper))
    first = meta_gradient(build("torch", "maml", first_order=True, **hyper))
    assert max(float(np.abs(recomputed[k] - first[k]).max()) for k in first) > 1e-6


def test_torch_auto_runs_recompute_in_the_per_task_loop() -> None:
    pytest.importorskip("torch")
    spec = TaskSpec("regression", (1,), 1, default_model="mlp")
    assert build_mlp(spec, recompute_inner=True).mode == "loop"
    assert build_mlp(spec).mode == "vectorized"
    assert build_mlp(spec, recompute_inner=True, first_order=True).mode == "vectorized"


def test_torch_vectorized_recompute_is_one_clear_error() -> None:
    pytest.importorskip("torch")
    spec = TaskSpec("regression", (1,), 1, default_model="mlp")
    with pytest.raises(ConfigError, match="recompute_inner runs tasks one at a time.*'vectorized'"):
        build_mlp(spec, recompute_inner=True, batching="vectorized")


def build_mlp(spec: TaskSpec, **hyper: Any) -> Any:
    from metaplug.testing import build_algorithm

    return build_algorithm("maml", "torch", spec, **hyper)


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_a_stateful_inner_rule_cannot_be_recomputed(backend: str) -> None:
    pytest.importorskip("torch" if backend == "torch" else "tensorflow")
    with pytest.raises(ConfigError, match="recompute_inner needs an inner rule without per-task state; 'inner-adam'"):
        build(backend, "maml", model="mlp", inner_rule="inner-adam", recompute_inner=True)


def ancestors(tensors: Any) -> set[Any]:
    """Every op that ``tensors`` are computed from (data inputs, transitively), theirs included."""
    seen: set[Any] = set()
    todo = [t.op for t in tensors]
    while todo:
        op = todo.pop()
        if op not in seen:
            seen.add(op)
            todo.extend(t.op for t in op.inputs)
    return seen


def graphs(graph: Any) -> Any:
    """``graph`` and the bodies of its while loops (loop mode runs the tasks in one)."""
    yield graph
    for op in graph.get_operations():
        body = getattr(op, "_body_graph", None)
        if body is not None:
            yield from graphs(body)


@pytest.mark.parametrize("batching", ["vectorized", "loop"])
def test_tensorflow_recomputes_a_step_only_after_its_gradient_arrives(batching: str) -> None:
    """The memory bound, checked on the compiled training step's graph instead of on RSS: a
    graph op runs as soon as its inputs exist, so a recomputation computable from the forward
    pass alone would run during it and keep every step's intermediates until the backward
    pass (the first version did, and peaked as high as storing). Each recomputed product must
    need something that is neither forward pass nor recomputation: the incoming gradient."""
    pytest.importorskip("tensorflow")
    hyper = {"model": "mlp", "inner_lr": 0.1, "inner_steps": 1, "batching": batching}
    graph = training_graph(build("tensorflow", "maml", recompute_inner=True, **hyper))
    [body] = [g for g in graphs(graph) if any("recomputed_step" in op.name for op in g.get_operations())]
    if body is graph:  # vectorized: the metrics are the step's outputs
        metrics = list(graph.outputs)
    else:  # loop: the metrics are what the loop body writes per task
        metrics = [op.inputs[2] for op in body.get_operations() if op.type == "TensorListSetItem"]
    assert metrics
    forward = ancestors(metrics)
    recomputed = {op for op in body.get_operations() if "recomputed_step" in op.name}
    products = [op for op in recomputed if op.type in ("MatMul", "BatchMatMulV2")]
    assert len(products) >= 2  # at least one forward and one backward product
    early = [op.name for op in products if not ancestors(op.inputs) - forward - recomputed]
    assert not early, f"recomputed products that can run during the forward pass: {early}"


def training_graph(maml: Any) -> Any:
    """The graph of ``maml``'s compiled training step, traced as meta_train_step traces it (not run)."""
    e = maml.episode_tensors(batch(maml.spec))
    with maml.backend.scope():
        return maml._train_fn.get_concrete_function(e.support_x, e.support_y, e.query_x, e.query_y).graph


@pytest.mark.parametrize("batching", ["vectorized", "loop"])
def test_tensorflow_recomputed_steps_run_in_one_graph_loop(batching: str) -> None:
    """Several recomputed steps run in a ``tf.while_loop``: the training step's graph does not
    grow with the steps (unrolled, the graph of ten ResNet-12 steps cost more memory than
    their tensors, docs/benchmarks.md); stored steps still unroll."""
    pytest.importorskip("tensorflow")

    def size(steps: int, recompute: bool) -> int:
        hyper = {"model": "mlp", "inner_lr": 0.1, "inner_steps": steps, "batching": batching}
        graph = training_graph(build("tensorflow", "maml", recompute_inner=recompute, **hyper))
        return sum(len(g.get_operations()) for g in graphs(graph))

    assert size(2, True) == size(5, True)
    assert size(2, False) < size(5, False)


@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_recomputed_training_resumes_bitwise(backend: str) -> None:
    """Two steps in one go, or one step, a new instance loading its state and the second step:
    the same state, bit for bit."""
    pytest.importorskip("torch" if backend == "torch" else "tensorflow")
    hyper = {"model": "mlp", "inner_lr": 0.1, "inner_steps": 3, "batching": "loop", "recompute_inner": True}
    batches = [batch(MLP_SPEC, seed) for seed in (1, 2)]
    straight = build(backend, "maml", **hyper)
    for b in batches:
        straight.meta_train_step(b)
    first = build(backend, "maml", **hyper)
    first.meta_train_step(batches[0])
    resumed = build(backend, "maml", **hyper)
    resumed.load_state_dict(first.state_dict())
    resumed.meta_train_step(batches[1])
    expected, final = straight.state_dict(), resumed.state_dict()
    assert set(final) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(np.asarray(final[key]), np.asarray(expected[key]), err_msg=key)
