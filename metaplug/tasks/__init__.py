"""Built-in task samplers: sinusoid regression, N-way K-shot episodes, Omniglot, your own
folder of images (:class:`ImageFolderSampler`) or table (:class:`TableSampler`,
:class:`TableClassesSampler`)."""

from metaplug.tasks.episodes import ClassDataset, EpisodeSampler, LabelledArrays, NWayKShot, split_rng
from metaplug.tasks.imagefolder import ImageFolderSampler
from metaplug.tasks.sinusoid import SinusoidSampler
from metaplug.tasks.table import TableClassesSampler, TableSampler

__all__ = [
    "ClassDataset",
    "EpisodeSampler",
    "ImageFolderSampler",
    "LabelledArrays",
    "NWayKShot",
    "SinusoidSampler",
    "TableClassesSampler",
    "TableSampler",
    "split_rng",
]
