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
    for name, target, summary in BENCHMARKS:
        register(Component(name=name, summary=summary, target=target, problems=("classification",)))
    register(
        Component(
            name="image-folder",
            summary="N-way K-shot episodes over your own images, ROOT/<class>/<images> (tasks.root=PATH).",
            target="metaplug.tasks.imagefolder:ImageFolderSampler",
            problems=("classification",),
        )
    )
    register(
        Component(
            name="table",
            summary="Meta-regression over the tasks of a CSV or .npz table (tasks.path=FILE, tasks.task_column=...).",
            target="metaplug.tasks.table:TableSampler",
            problems=("regression",),
        )
    )
    register(
        Component(
            name="table-classes",
            summary="N-way K-shot classification over the rows of a CSV or .npz table (tasks.class_column=...).",
            target="metaplug.tasks.table:TableClassesSampler",
            problems=("classification",),
        )
    )


BENCHMARKS = (
    (
        "mini-imagenet",
        "metaplug.tasks.mini_imagenet:MiniImageNetSampler",
        "mini-ImageNet (Vinyals et al. 2016), Ravi & Larochelle's 64/16/20 class split, 84x84.",
    ),
    (
        "tiered-imagenet",
        "metaplug.tasks.tiered_imagenet:TieredImageNetSampler",
        "tiered-ImageNet (Ren et al. 2018): 351/97/160 ImageNet classes in 20/6/8 categories, 84x84.",
    ),
    (
        "cifar-fs",
        "metaplug.tasks.cifar100:CifarFSSampler",
        "CIFAR-FS (Bertinetto et al. 2019): 64/16/20 CIFAR-100 classes, 32x32, from the binary archive.",
    ),
    (
        "fc100",
        "metaplug.tasks.cifar100:FC100Sampler",
        "FC100 (Oreshkin et al. 2018): 60/20/20 CIFAR-100 classes split by superclass, 32x32.",
    ),
    (
        "cub",
        "metaplug.tasks.cub:CUBSampler",
        "CUB-200-2011 birds (Wah et al. 2011), Chen et al. 2019's 100/50/50 class split, 84x84.",
    ),
)
"""The standard few-shot benchmarks: ``(name, target, summary)``."""


@hookimpl
def register_observers(register: Register) -> None:
    register(
        Component(
            name="jsonl",
            summary="Training and validation metrics as JSON lines in RUN_DIR/metrics.jsonl (plot, compare).",
            target="metaplug.experiment.metrics:JsonlObserver",
        )
    )
