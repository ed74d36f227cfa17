"""The ``metaplug`` entry point: registers the PyTorch components by name only.

This module must stay cheap to import: no torch here, every ``target`` is a
string (relative to this package) that the host imports when the component is
first used.
"""

from __future__ import annotations

from metaplug import Component, Register, hookimpl

BACKEND = "torch"
PACKAGE = "metaplug_torch"
BOTH = ("regression", "classification")

ALGORITHMS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("maml", "algorithms.maml:MAML", BOTH, "Model-Agnostic Meta-Learning, second order (Finn et al. 2017)."),
    ("fomaml", "algorithms.maml:FOMAML", BOTH, "First-order MAML (Finn et al. 2017)."),
    ("reptile", "algorithms.reptile:Reptile", BOTH, "Reptile: move towards task-adapted weights (Nichol et al. 2018)."),
    ("anil", "algorithms.maml:ANIL", BOTH, "Almost No Inner Loop: MAML adapting only the head (Raghu et al. 2020)."),
    (
        "metasgd",
        "algorithms.maml:MetaSGD",
        BOTH,
        "Meta-SGD: MAML with learned per-parameter inner rates (Li et al. 2017).",
    ),
    (
        "mamlpp",
        "algorithms.mamlpp:MAMLPlusPlus",
        BOTH,
        "MAML++: MAML with multi-step loss, learned per-step rates, per-step batch norm (Antoniou et al. 2019).",
    ),
    (
        "protonet",
        "algorithms.protonet:ProtoNet",
        ("classification",),
        "Prototypical Networks, classification only (Snell et al. 2017).",
    ),
    (
        "finetune",
        "algorithms.finetune:FineTune",
        BOTH,
        "Transfer baseline: pre-train on all training tasks, fine-tune per task.",
    ),
    (
        "relationnet",
        "algorithms.relationnet:RelationNet",
        ("classification",),
        "Relation Networks: a learned relation module scores (class, query) pairs (Sung et al. 2018).",
    ),
    (
        "r2d2",
        "algorithms.r2d2:R2D2",
        ("classification",),
        "R2-D2: ridge regression in closed form on the embedding (Bertinetto et al. 2019).",
    ),
    (
        "metalstm",
        "algorithms.metalstm:MetaLSTM",
        BOTH,
        "Meta-LSTM: an LSTM that updates the learner's parameters (Ravi and Larochelle 2017).",
    ),
)
"""Rows ``(name, target, problems, summary)``."""

OPTIMIZERS: tuple[tuple[str, str, str, str], ...] = (
    ("sgd", "optimizers:SGD", "outer", "SGD with momentum; step decay or linear annealing (torch.optim.SGD)."),
    ("adam", "optimizers:Adam", "outer", "Adam; step decay or linear annealing (torch.optim.Adam)."),
    ("rmsprop", "optimizers:RMSprop", "outer", "RMSprop; step decay or linear annealing (torch.optim.RMSprop)."),
    ("inner-sgd", "inner:InnerSGD", "inner", "Inner-loop gradient descent p - lr * grad."),
    ("inner-metasgd", "inner:InnerMetaSGD", "inner", "Inner-loop descent with learned per-parameter rates (Meta-SGD)."),
    ("inner-adam", "inner:InnerAdam", "inner", "Inner-loop Adam, differentiable, moments fresh per task."),
    ("inner-rmsprop", "inner:InnerRMSprop", "inner", "Inner-loop RMSprop, differentiable, average fresh per task."),
)
"""Rows ``(name, target, role, summary)``."""

MODELS: tuple[tuple[str, str, str], ...] = (
    ("mlp", "models:MLPBuilder", "Multi-layer perceptron, 1-40-40-1 on the sinusoid (Finn et al. 2017)."),
    ("conv4", "models:Conv4Builder", "Four conv blocks and a linear head (Vinyals et al. 2016; Finn et al. 2017)."),
    ("resnet12", "models:ResNet12Builder", "ResNet-12, 64-160-320-640 (Oreshkin et al. 2018; Lee et al. 2019)."),
)
"""Rows ``(name, target, summary)``; the options are the host's (metaplug.contract.hyperparameters)."""


@hookimpl
def register_backends(register: Register) -> None:
    register(
        Component(
            BACKEND,
            "PyTorch: CPU or CUDA; models mlp, conv4 and resnet12; tasks batched with torch.func.",
            f"{PACKAGE}.backend:Backend",
        )
    )


@hookimpl
def register_algorithms(register: Register) -> None:
    for name, target, problems, summary in ALGORITHMS:
        register(Component(name, summary, f"{PACKAGE}.{target}", backends=(BACKEND,), problems=problems))


@hookimpl
def register_optimizers(register: Register) -> None:
    for name, target, role, summary in OPTIMIZERS:
        register(Component(name, summary, f"{PACKAGE}.{target}", backends=(BACKEND,), role=role))


@hookimpl
def register_models(register: Register) -> None:
    for name, target, summary in MODELS:
        register(Component(name, summary, f"{PACKAGE}.{target}", backends=(BACKEND,)))
