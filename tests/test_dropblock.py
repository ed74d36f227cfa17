"""ResNet-12's dropout and DropBlock (``drop_rate``; docs/models.md): the host's reference
draws (:mod:`metaplug.contract.dropblock`), each backend's tensors against them, and how
algorithms use them: only in meta-training forwards, the same under every batching mode,
bitwise on resume. Cross-backend meta-step parity with DropBlock is in
``test_parity_resnet12.py``."""

from __future__ import annotations

import functools
import importlib.util
from typing import Any

import numpy as np
import pytest

from metaplug.contract import dropblock
from metaplug.contract.distributed import shard
from metaplug.contract.interfaces import EpisodeBatch, ModelSpec, TaskSpec
from metaplug.plugins.discovery import registry

SPEC = TaskSpec("classification", (1, 16, 16), 3, num_classes=12, default_model="resnet12")
DROP = {"drop_rate": 0.3, "dropblock_size": 2, "dropblock_ramp": 3}
"""16x16 inputs leave 2x2 and 1x1 maps after blocks 3 and 4; a short ramp reaches the full rate fast."""
MODEL = ModelSpec("resnet12", SPEC.input_shape, SPEC.output_size, {"channels": (4, 4, 4, 8), **DROP})
PLAIN = ModelSpec("resnet12", SPEC.input_shape, SPEC.output_size, {"channels": (4, 4, 4, 8)})


def mask(shape: tuple[int, ...], **key: Any) -> np.ndarray:
    draws = {"seed": 5, "step": 2, "task": 1, "forward": 0, "block": 2, "rate": 0.3, "block_size": 3, "ramp": 4}
    return dropblock.keep_mask(shape, **{**draws, **key})


# -- the reference -------------------------------------------------------------------------


def test_hash_is_a_bijection_with_uniform_output():
    x = np.arange(1 << 16, dtype=np.int64)
    values = dropblock.hash32(x)
    assert len(np.unique(values)) == len(x) and values.min() >= 0 and values.max() <= dropblock.MASK32
    assert abs(values.mean() / 2.0**32 - 0.5) < 0.01
    assert dropblock.hash32(7) == int(dropblock.hash32(np.int64(7)))  # ints and arrays alike


def test_dropout_blocks_drop_their_rate_and_rescale():
    for block in (0, 1):
        m = mask((8, 16, 12, 12), block=block)
        assert abs(np.mean(m == 0) - 0.3) < 0.01
        assert set(np.unique(m)) == {0.0, 1 / 0.7}


def test_dropblock_drops_whole_blocks_inside_the_map_and_keeps_the_mean():
    m = mask((4, 8, 9, 9), step=10)  # full rate
    dropped = m == 0
    assert 0.1 < dropped.mean() < 0.3
    assert np.isclose(m.mean(), 1.0)  # rescaled by elements / kept elements
    # every dropped pixel lies in a 3x3 window, inside the map, that is dropped entirely
    windows = np.zeros_like(dropped)
    for i in range(7):
        for j in range(7):
            full = dropped[:, :, i : i + 3, j : j + 3].all(axis=(2, 3))
            windows[:, :, i : i + 3, j : j + 3] |= full[:, :, None, None]
    assert np.array_equal(windows, dropped)


def test_dropblock_blocks_are_clamped_to_the_map():
    m = mask((64, 4, 2, 2), block_size=5, step=10)  # a 2x2 map: one block is the whole map
    per_map = (m == 0).reshape(64 * 4, 4)
    assert np.all(per_map.all(axis=1) | ~per_map.any(axis=1))
    assert per_map.any()


def test_dropblock_rate_ramps_linearly_to_drop_rate():
    thresholds = [dropblock.dropblock_threshold(0.1, 10, 10, 5, 4, step) for step in range(6)]
    full = dropblock.dropblock_threshold(0.1, 10, 10, 5, 1, 0)
    assert thresholds[3] == thresholds[4] == thresholds[5] == full
    assert np.allclose(thresholds[:4], [full / 4, full / 2, 3 * full / 4, full], rtol=1e-9, atol=1)
    gamma = 0.1 / 25 * 100 / 36  # MetaOptNet's gamma on a 10x10 map with 5x5 blocks
    assert full == int(gamma * 2**32)


def test_every_part_of_the_key_changes_the_draws():
    base = mask((2, 4, 6, 6))
    assert np.array_equal(base, mask((2, 4, 6, 6)))
    for change in ({"seed": 6}, {"seed": 5 + (1 << 32)}, {"step": 3}, {"task": 2}, {"forward": 1}, {"block": 3}):
        assert not np.array_equal(base, mask((2, 4, 6, 6), **change)), change


# -- the backends ----------------------------------------------------------------------------


def backend_or_skip(name: str) -> Any:
    module = {"torch": "metaplug_torch", "tensorflow": "metaplug_tensorflow"}[name]
    if importlib.util.find_spec(name) is None or importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    backend = registry().load("backends", name)(device="cpu")
    backend.seed(0)
    return backend


@pytest.mark.parametrize("block", range(4))
def test_torch_draws_the_reference_masks(block):
    backend_or_skip("torch")
    import torch

    from metaplug_torch.models import DropOptions, drop

    def dropped(x: torch.Tensor, task: Any) -> torch.Tensor:
        return drop(x, DropOptions(0.3, 3, 4), 5, 2, task, 0, block)

    x = np.random.default_rng(0).normal(size=(2, 3, 6, 6))
    for task in (1, torch.tensor(1)):
        np.testing.assert_allclose(dropped(torch.from_numpy(x), task), x * mask(x.shape, block=block), rtol=1e-13)
    # under vmap the task number is batched: each task gets its own masks
    xs = np.stack([x, 2 * x])
    mapped = torch.func.vmap(dropped, randomness="error")(torch.from_numpy(xs), torch.tensor([1, 4])).numpy()
    for row, task in enumerate((1, 4)):
        np.testing.assert_allclose(mapped[row], xs[row] * mask(x.shape, block=block, task=task), rtol=1e-13)


@pytest.mark.parametrize("block", range(4))
def test_tensorflow_draws_the_reference_masks(block):
    backend_or_skip("tensorflow")
    from metaplug_tensorflow._tf import tf
    from metaplug_tensorflow.models import Draw, drop

    spec = ModelSpec("resnet12", (3, 6, 6), 2, {"drop_rate": 0.3, "dropblock_size": 3, "dropblock_ramp": 4})
    x = np.random.default_rng(0).normal(size=(2, 2, 3, 6, 6))  # two tasks, channels first
    h = tf.constant(np.transpose(x, [0, 1, 3, 4, 2]).reshape(4, 6, 6, 3))
    draw = Draw(5, tf.constant(2, tf.int64), 0, tf.constant([1, 4], tf.int64))
    out = np.transpose(drop(h, 2, 2, draw, block, spec).numpy().reshape(2, 2, 6, 6, 3), [0, 1, 4, 2, 3])
    for row, task in enumerate((1, 4)):
        np.testing.assert_allclose(out[row], x[row] * mask(x.shape[1:], block=block, task=task), rtol=1e-13)


def batch(seed: int, tasks: int = 2) -> EpisodeBatch:
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(3), (tasks, 2))
    prototypes = rng.uniform(size=(tasks, 3, *SPEC.input_shape))
    x = prototypes[np.arange(tasks)[:, None], labels] + 0.3 * rng.normal(size=(*labels.shape, *SPEC.input_shape))
    x = x.astype(np.float32)
    classes = np.stack([rng.choice(12, 3, replace=False) for _ in range(tasks)])
    return EpisodeBatch(x, labels, x[:, ::-1].copy(), labels[:, ::-1].copy(), "classification", classes)


def build(backend_name: str, name: str, model: ModelSpec = MODEL, **hyper: Any) -> Any:
    backend = backend_or_skip(backend_name)
    if backend_name == "tensorflow":
        backend = type(backend)(device="cpu", dtype="float64")
    reg = registry()
    sgd = functools.partial(reg.load("optimizers", "sgd", backend=backend_name), lr=0.5)
    built = backend.build_model(model)
    if backend_name == "torch":
        built = built.double()
    options = {"inner_lr": 0.1, "inner_steps": 2} if name == "maml" else {}
    return reg.load("algorithms", name, backend=backend_name)(
        backend=backend, model=built, spec=SPEC, optimizer=sgd, **{**options, **hyper}
    )


def model_state(algorithm: Any) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in algorithm.state_dict().items()}


CASES = [
    ("torch", "maml"),
    ("tensorflow", "protonet"),
    pytest.param("tensorflow", "maml", marks=pytest.mark.slow),  # traces for about a minute on 2 cores
]


@pytest.mark.parametrize("backend_name, name", CASES)
def test_drop_rate_acts_in_meta_training_only(backend_name, name):
    dropping, plain = build(backend_name, name), build(backend_name, name, PLAIN)
    plain.load_state_dict(dropping.state_dict())
    test = batch(7)
    for key, value in dropping.evaluate(test).items():  # evaluation and adaptation: no drops
        np.testing.assert_array_equal(value, plain.evaluate(test)[key], err_msg=key)
    predicted = [a.adapt(test.support_x[0], test.support_y[0]).predict(test.query_x[0]) for a in (dropping, plain)]
    np.testing.assert_array_equal(*predicted)
    trained = [a.meta_train_step(batch(1))["loss"] for a in (dropping, plain)]
    assert trained[0] != trained[1] and all(np.isfinite(trained))


@pytest.mark.parametrize("backend_name, name", CASES)
def test_batching_modes_draw_alike(backend_name, name):
    steps = []
    for mode in ("loop", "vectorized"):
        algorithm = build(backend_name, name, batching=mode)
        algorithm.meta_train_step(batch(1, tasks=3))
        steps.append(model_state(algorithm))
    for key in steps[0]:
        np.testing.assert_allclose(steps[1][key], steps[0][key], rtol=1e-9, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("backend_name", ["torch", "tensorflow"])
def test_resume_draws_what_the_uninterrupted_run_draws(backend_name):
    batches = [batch(seed) for seed in (1, 2, 3)]
    straight = build(backend_name, "protonet")
    for b in batches:
        straight.meta_train_step(b)
    first = build(backend_name, "protonet")
    first.meta_train_step(batches[0])
    resumed = build(backend_name, "protonet")
    resumed.load_state_dict(first.state_dict())
    for b in batches[1:]:
        resumed.meta_train_step(b)
    final, expected = model_state(resumed), model_state(straight)
    for key in expected:
        np.testing.assert_array_equal(final[key], expected[key], err_msg=key)


@pytest.mark.parametrize("backend_name", ["torch", "tensorflow"])
def test_workers_slices_draw_what_the_whole_meta_batch_draws(backend_name):
    """Each worker trains a slice of the meta-batch (shard); its DropBlock masks are drawn by
    each task's place in the whole meta-batch, so the workers' mean SGD update is one process's."""
    whole = batch(1, tasks=4)
    start = build(backend_name, "protonet")
    initial = model_state(start)
    start.meta_train_step(whole)
    expected = model_state(start)
    updates = []
    for rank in range(2):
        worker = build(backend_name, "protonet")
        worker.meta_train_step(shard(whole, rank, 2))
        updates.append({k: v - initial[k] for k, v in model_state(worker).items() if k.startswith("model.")})
    for key, update in updates[0].items():
        np.testing.assert_allclose(
            initial[key] + (update + updates[1][key]) / 2, expected[key], rtol=1e-10, atol=1e-12, err_msg=key
        )
