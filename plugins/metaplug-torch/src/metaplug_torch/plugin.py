"""The ``metaplug`` entry point: registers the PyTorch components by name only.

This module must stay cheap to import: no torch here, every ``target`` is a
string that the host imports when the component is first used.
"""

from __future__ import annotations

from metaplug import Component, Register, hookimpl

BACKEND = ("torch",)
BOTH = ("regression", "classification")

ALGORITHMS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("maml", "Model-Agnostic Meta-Learning, second order (Finn et al. 2017).", "maml:MAML", BOTH),
    ("fomaml", "First-order MAML (Finn et al. 2017).", "maml:FOMAML", BOTH),
    ("reptile", "Reptile: move towards task-adapted weights (Nichol et al. 2018).", "reptile:Reptile", BOTH),
    ("anil", "Almost No Inner Loop: MAML adapting only the head (Raghu et al. 2020).", "maml:ANIL", BOTH),
    ("metasgd", "Meta-SGD: MAML with learned per-parameter inner rates (Li et al. 2017).", "maml:MetaSGD", BOTH),
    ("protonet", "Prototypical Networks, classification only (Snell et al. 2017).", "protonet:ProtoNet",
     ("classification",)),
    ("finetune", "Transfer baseline: pre-train on all training tasks, fine-tune per task.", "finetune:Finetune",
     BOTH),
)

OPTIMIZERS: tuple[tuple[str, str, str, str], ...] = (
    ("sgd", "SGD with momentum; step decay or linear annealing (torch.optim.SGD).", "optimizers:sgd", "outer"),
    ("adam", "Adam; step decay or linear annealing (torch.optim.Adam).", "optimizers:adam", "outer"),
    ("rmsprop", "RMSprop; step decay or linear annealing (torch.optim.RMSprop).", "optimizers:rmsprop", "outer"),
    ("inner-sgd", "Inner-loop gradient descent p - lr * grad.", "inner:InnerSGD", "inner"),
    ("inner-metasgd", "Inner-loop descent with learned per-parameter rates (Meta-SGD).", "inner:InnerMetaSGD",
     "inner"),
)


@hookimpl
def register_backends(register: Register) -> None:
    register(Component(
        name="torch",
        summary="PyTorch: CPU or CUDA; models mlp and conv4; tasks batched with torch.func.",
        target="metaplug_torch.backend:TorchBackend",
    ))


@hookimpl
def register_algorithms(register: Register) -> None:
    for name, summary, target, problems in ALGORITHMS:
        register(Component(name, summary, f"metaplug_torch.algorithms.{target}", backends=BACKEND,
                           problems=problems))


@hookimpl
def register_optimizers(register: Register) -> None:
    for name, summary, target, role in OPTIMIZERS:
        register(Component(name, summary, f"metaplug_torch.{target}", backends=BACKEND, role=role))
