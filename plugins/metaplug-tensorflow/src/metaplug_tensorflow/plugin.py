"""Entry point of the ``metaplug`` group: registers the TensorFlow components.

This module imports no TensorFlow: every record names its implementation with a
``target`` string that is imported only when the component is used.
"""

from __future__ import annotations

from metaplug import Component, Register, hookimpl

BACKEND = "tensorflow"
BOTH = ("regression", "classification")

ALGORITHMS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("maml", "maml:MAML", "Model-Agnostic Meta-Learning, second order (Finn et al. 2017).", BOTH),
    ("fomaml", "maml:FOMAML", "First-order MAML (Finn et al. 2017).", BOTH),
    ("reptile", "reptile:Reptile", "Reptile (Nichol et al. 2018).", BOTH),
    ("anil", "maml:ANIL", "Almost No Inner Loop: MAML adapting only the head (Raghu et al. 2020).", BOTH),
    ("metasgd", "maml:MetaSGD", "Meta-SGD: MAML with learned per-parameter inner rates (Li et al. 2017).", BOTH),
    ("protonet", "protonet:ProtoNet", "Prototypical Networks, classification only (Snell et al. 2017).",
     ("classification",)),
    ("finetune", "finetune:FineTune", "Transfer baseline: pre-train jointly, fine-tune on each task.", BOTH),
)

OPTIMIZERS: tuple[tuple[str, str, str, str], ...] = (
    ("sgd", "outer", "optimizers:sgd", "SGD with optional momentum; step decay or linear annealing."),
    ("adam", "outer", "optimizers:adam", "Adam (Kingma and Ba 2015); step decay or linear annealing."),
    ("rmsprop", "outer", "optimizers:rmsprop", "RMSprop (PyTorch's formulation); step decay or linear annealing."),
    ("inner-sgd", "inner", "inner:InnerSGD", "Inner loop: plain gradient descent p - lr * grad."),
    ("inner-metasgd", "inner", "inner:InnerMetaSGD", "Inner loop: learned per-parameter rates (Meta-SGD)."),
)


@hookimpl
def register_backends(register: Register) -> None:
    register(Component(
        name=BACKEND,
        summary="TensorFlow 2 (tf.function, nested GradientTape); CPU or GPU.",
        target="metaplug_tensorflow.backend:TensorFlowBackend",
    ))


@hookimpl
def register_algorithms(register: Register) -> None:
    for name, target, summary, problems in ALGORITHMS:
        register(Component(
            name=name,
            summary=summary,
            target=f"metaplug_tensorflow.algorithms.{target}",
            backends=(BACKEND,),
            problems=problems,
        ))


@hookimpl
def register_optimizers(register: Register) -> None:
    for name, role, target, summary in OPTIMIZERS:
        register(Component(
            name=name,
            summary=summary,
            target=f"metaplug_tensorflow.{target}",
            backends=(BACKEND,),
            role=role,
        ))
