"""Background prefetching: the same batches in the same order, and a state that resumes bitwise."""

from __future__ import annotations

import json

import pytest
from own_data import make_image_folder

from metaplug.errors import ConfigError
from metaplug.experiment.prefetch import Prefetcher
from metaplug.tasks.imagefolder import ImageFolderSampler
from metaplug.tasks.sinusoid import SinusoidSampler
from metaplug.testing.samplers import assert_same_episodes


@pytest.fixture
def images(tmp_path, monkeypatch):
    monkeypatch.setenv("METAPLUG_CACHE_DIR", str(tmp_path / "cache"))
    root = make_image_folder(tmp_path / "images", classes=6, per_class=6)

    def make():
        return ImageFolderSampler(
            "train", 3, root=str(root), ways=3, shots=2, queries=2, image_size=12, augment=["crop", "flip", "jitter"]
        )

    return make


@pytest.mark.parametrize("workers", [1, 3])
def test_same_batches_as_drawing_directly_whatever_the_workers(images, workers):
    direct = images()
    expected = [direct.sample(2) for _ in range(6)]
    with Prefetcher(images(), 2, depth=3, workers=workers) as prefetched:
        for batch in expected:
            assert_same_episodes(prefetched.sample(2), batch)
        assert prefetched.batches == 6 and prefetched.waited_s >= 0


def test_state_is_after_the_last_batch_handed_out_not_the_ones_drawn_ahead(images):
    direct = images()
    prefetched = Prefetcher(images(), 2, depth=4, workers=2)
    for _ in range(3):
        direct.sample(2)
        prefetched.sample(2)
    state = json.loads(json.dumps(prefetched.state_dict()))
    assert state == json.loads(json.dumps(direct.state_dict()))
    following = [direct.sample(2) for _ in range(3)]
    resumed = Prefetcher(images(), 2, depth=2)
    resumed.load_state_dict(state)
    for batch in following:
        assert_same_episodes(resumed.sample(2), batch)
    assert_same_episodes(prefetched.sample(2), following[0])  # the prefetched one goes on too
    prefetched.load_state_dict(state)  # rewinding drops what was drawn ahead
    assert_same_episodes(prefetched.sample(2), following[0])
    prefetched.close()
    resumed.close()


def test_any_sampler_and_other_batch_sizes():
    direct = SinusoidSampler("train", 1)
    wrapped = Prefetcher(SinusoidSampler("train", 1), 4, depth=2, workers=4)
    for size in (4, 4, 3, 4):  # a size it does not prefetch is drawn directly, in order
        assert_same_episodes(wrapped.sample(size), direct.sample(size))
    wrapped.close()
    assert wrapped.spec == direct.spec
    with pytest.raises(ConfigError, match="train.prefetch must be at least 1"):
        Prefetcher(direct, 4, depth=0)


class Failing:
    spec = SinusoidSampler("train", 0).spec

    def __init__(self):
        self.calls = 0

    def sample(self, num_tasks):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("disk went away")
        return SinusoidSampler("train", 0).sample(num_tasks)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_an_error_while_drawing_reaches_the_caller():
    wrapped = Prefetcher(Failing(), 2)
    wrapped.sample(2)
    with pytest.raises(RuntimeError, match="disk went away"):
        wrapped.sample(2)


def test_prefetch_settings_and_runs_saved_before_them():
    from metaplug.experiment.config import defaults, from_dict

    raw = defaults()
    assert (raw["train"]["prefetch"], raw["train"]["data_workers"]) == (2, 1)
    del raw["train"]["prefetch"], raw["train"]["data_workers"]  # a config.toml written before these keys
    cfg = from_dict(raw)
    assert (cfg.train.prefetch, cfg.train.data_workers) == (2, 1)
    raw["train"]["data_workers"] = 0
    with pytest.raises(ConfigError, match="train.data_workers must be at least 1"):
        from_dict(raw)
