"""Inner-loop mini-batches drawn as supervised-reptile's ``_mini_batches``, the same on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from metaplug.contract.minibatches import EVAL, TRAIN, MiniBatchDraws, draw_generator, mini_batches
from metaplug.errors import ConfigError


def supervised_reptile_mini_batches(samples, batch_size, num_batches, shuffle):
    """supervised_reptile/reptile.py ``_mini_batches(..., replacement=False)``, with
    ``random.shuffle`` replaced by ``shuffle``."""
    cur_batch, samples, batch_count = [], list(samples), 0
    while True:
        shuffle(samples)
        for sample in samples:
            cur_batch.append(sample)
            if len(cur_batch) < batch_size:
                continue
            yield cur_batch
            cur_batch, batch_count = [], batch_count + 1
            if batch_count == num_batches:
                return


@pytest.mark.parametrize("size, batch_size, count", [(5, 5, 50), (50, 10, 5), (7, 3, 9), (4, 10, 3)])
def test_mini_batches_follow_supervised_reptile(size, batch_size, count):
    reference_rng = np.random.default_rng(42)

    def shuffle(items):  # the same permutations as Generator.shuffle on the current order
        items[:] = [items[i] for i in reference_rng.permutation(len(items))]

    expected = list(supervised_reptile_mini_batches(range(size), batch_size, count, shuffle))
    drawn = mini_batches(np.random.default_rng(42), size, batch_size, count)
    assert drawn.shape == (count, batch_size)
    assert drawn.tolist() == expected
    if size % batch_size == 0 and size >= batch_size:  # each pass over the data is a permutation
        assert all(sorted(p) == list(range(size)) for p in drawn.reshape(-1, size))


def test_each_task_of_a_stream_draws_from_its_own_generator():
    draws = MiniBatchDraws(seed=11, train_batch_size=2, eval_batch_size=3)
    first, second = draws.draw(TRAIN, 3, 4, 5), draws.draw(TRAIN, 2, 4, 5)
    assert first.shape == (3, 4, 2) and second.shape == (2, 4, 2) and draws.drawn == [5, 0]
    for k, rows in enumerate([*first, *second]):
        np.testing.assert_array_equal(rows, mini_batches(draw_generator(11, TRAIN, k), 5, 2, 4))
    evaluation = draws.draw(EVAL, 1, 6, 5)
    np.testing.assert_array_equal(evaluation[0], mini_batches(draw_generator(11, EVAL, 0), 5, 3, 6))
    assert draws.drawn == [5, 1]


def test_state_round_trip_continues_the_same_draws():
    draws = MiniBatchDraws(seed=3, train_batch_size=4, eval_batch_size=None)
    draws.draw(TRAIN, 7, 2, 10)
    state = draws.state()
    assert {k: v.tolist() for k, v in state.items()} == {
        "inner_batches.seed": 3,
        "inner_batches.train": 7,
        "inner_batches.eval": 0,
    }
    assert all(v.shape == () for v in state.values())
    restored = MiniBatchDraws(seed=99, train_batch_size=4, eval_batch_size=None)
    restored.load_state(state)
    np.testing.assert_array_equal(restored.draw(TRAIN, 2, 2, 10), draws.draw(TRAIN, 2, 2, 10))
    assert draws.draw(EVAL, 4, 2, 10) is None


def test_without_mini_batches_there_is_no_state_and_a_missing_one_is_an_error():
    assert MiniBatchDraws(0, None, None).state() == {}
    MiniBatchDraws(0, None, None).load_state({})
    with pytest.raises(ConfigError, match="inner_batches.seed"):
        MiniBatchDraws(0, 2, None).load_state({})
