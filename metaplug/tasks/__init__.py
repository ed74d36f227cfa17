"""Built-in task samplers: sinusoid regression, N-way K-shot episodes, Omniglot."""

from metaplug.tasks.episodes import ClassDataset, EpisodeSampler, LabelledArrays, NWayKShot, split_rng
from metaplug.tasks.sinusoid import SinusoidSampler

__all__ = ["ClassDataset", "EpisodeSampler", "LabelledArrays", "NWayKShot", "SinusoidSampler", "split_rng"]
