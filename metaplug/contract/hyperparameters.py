"""The options of the standard algorithms, outer optimizers and models, declared once for every backend.

``metaplug-torch`` and ``metaplug-tensorflow`` implement the same algorithms with these
declarations, so one configuration means the same thing on both. A third-party
implementation of a standard algorithm (say ``maml`` on another backend) should use
them too; a new algorithm declares its own :class:`~metaplug.contract.options.Options`.
"""

from __future__ import annotations

from dataclasses import dataclass

from metaplug.contract.interfaces import is_stateful
from metaplug.contract.options import Options, option
from metaplug.errors import ConfigError

BATCHING: tuple[str, ...] = ("auto", "vectorized", "loop", "reference")
"""How the tasks of a meta-batch run. ``vectorized``: all at once (``torch.func.vmap``,
TensorFlow's task axis); ``loop``: one task at a time, so memory holds one task's graph;
``reference``: torch only, the plain per-task loop of learn2learn and higher (the
benchmarks' baseline); ``auto``: measured on the machine (:mod:`metaplug.contract.calibration`)."""

FREEZE_DURING: tuple[str, ...] = ("both", "training", "adaptation")
"""When the weights that ``freeze`` names stay fixed: ``training`` (the outer optimizer
leaves them alone), ``adaptation`` (inner loops and fine-tuning leave them alone) or ``both``."""

REGULARIZATION: tuple[str, ...] = ("none", "l2", "l2-sp")
"""The fine-tuning baseline's regulariser: ``l2`` pulls the fine-tuned weights towards zero
(weight decay), ``l2-sp`` towards their starting point (Li et al. 2018)."""


PRECISION: tuple[str, ...] = ("full", "tf32", "bf16")
"""How the model's float32 forward and backward passes compute. ``full``: in the model's own dtype
(float32 or float64) throughout, TensorFloat-32 off; ``tf32``: float32 matrix products and
convolutions in TensorFloat-32 on GPUs that have it (NVIDIA Ampere and later; nothing changes on
a CPU); ``bf16``: mixed precision, the model's forward (and so its backward) in bfloat16 while the
weights, the inner-loop updates, the losses and the optimizer stay float32."""

ANNEALING: tuple[str, ...] = ("linear", "cosine")
"""Shapes of an outer optimizer's annealing to ``final_lr`` (:func:`metaplug.contract.schedules.learning_rate`)."""


# -- algorithms ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchingOptions(Options):
    """Options every standard algorithm has: how tasks are batched, which model weights
    stay fixed (``freeze``, ``freeze_during``; :mod:`metaplug.contract.freezing`) and the
    arithmetic precision (``precision``, :data:`PRECISION`), which the backend plugins'
    algorithm base classes run."""

    batching: str = option("auto", choices=BATCHING, help="how the tasks of a meta-batch run: " + ", ".join(BATCHING))
    freeze: tuple[str, ...] = option(
        (), help='model weights kept fixed, as globs of layout names, e.g. ["features.0.*"] (docs/models.md)'
    )
    freeze_during: str = option(
        "both", choices=FREEZE_DURING, help="when frozen weights stay fixed: " + ", ".join(FREEZE_DURING)
    )
    precision: str = option(
        "full",
        choices=PRECISION,
        help="arithmetic of the model: full (its own dtype), tf32 (TensorFloat-32 on GPUs) or "
        "bf16 (bfloat16 forward, float32 weights and losses)",
    )

    @property
    def evaluation_steps(self) -> int:
        """Inner steps in ``evaluate`` and ``adapt``: none for an algorithm without an inner loop."""
        return 0


def check_precision(precision: str, model_dtype: str) -> None:
    """``tf32`` and ``bf16`` relax float32 arithmetic: a :class:`~metaplug.errors.ConfigError`
    naming the model's dtype when its weights are not float32 (a float64 model keeps ``full``)."""
    if precision != "full" and model_dtype != "float32":
        raise ConfigError(
            f"precision {precision!r} needs a float32 model; this model's weights are {model_dtype}: "
            "use precision = 'full' or a float32 model"
        )


def require_batching_options(cls: type) -> None:
    """For a backend plugin's algorithm base class, which runs the ``batching`` option: a
    ``TypeError`` at class creation unless ``cls.Options`` extends :class:`BatchingOptions`."""
    declared = getattr(cls, "Options", None)
    if not (isinstance(declared, type) and issubclass(declared, BatchingOptions)):
        raise TypeError(
            f"{cls.__name__}.Options must extend metaplug.contract.hyperparameters.BatchingOptions "
            f"(MetaLearner runs its batching option)"
        )


@dataclass(frozen=True)
class InnerLoopOptions(BatchingOptions):
    """Options of the algorithms that adapt by gradient steps on the support set."""

    inner_lr: float = option(
        0.01, minimum=0, exclusive=True, help="inner-loop learning rate (initial rate of learned rules)"
    )
    inner_steps: int = option(1, minimum=1, help="inner steps per task during meta-training")
    test_inner_steps: int | None = option(None, minimum=0, help="inner steps in evaluate and adapt (None: inner_steps)")
    transductive: bool = option(
        True, help="evaluation predicts all query examples in one batch; false: each with the support set"
    )

    @property
    def evaluation_steps(self) -> int:
        """``test_inner_steps``, or ``inner_steps`` when it is unset."""
        return self.inner_steps if self.test_inner_steps is None else self.test_inner_steps


@dataclass(frozen=True)
class FOMAMLOptions(InnerLoopOptions):
    """First-order MAML."""

    inner_rule: str = option("inner-sgd", help="inner-loop update rule: an optimizer with role 'inner'")


@dataclass(frozen=True)
class MAMLOptions(FOMAMLOptions):
    """MAML and ANIL."""

    first_order: bool = option(False, help="treat the inner gradients as constants (FOMAML)")
    recompute_inner: bool = option(
        False,
        help="second order: recompute each inner step in the backward pass instead of storing it "
        "(memory bounded in inner_steps, about one more forward and backward per step; batching loop)",
    )


def check_recompute(options: object, rule: object) -> None:
    """``recompute_inner`` reruns each inner step from its inputs, so the inner rule must keep
    no per-task state between steps: a :class:`~metaplug.errors.ConfigError` otherwise."""
    if getattr(options, "recompute_inner", False) and is_stateful(rule):  # type: ignore[arg-type]
        name = getattr(options, "inner_rule", type(rule).__name__)
        raise ConfigError(
            f"recompute_inner needs an inner rule without per-task state; {name!r} keeps state between "
            "steps: use a stateless rule (inner-sgd, inner-metasgd) or recompute_inner = false"
        )


@dataclass(frozen=True)
class MetaSGDOptions(MAMLOptions):
    """Meta-SGD: MAML with the learned-rate rule."""

    inner_rule: str = option("inner-metasgd", help="inner-loop update rule: an optimizer with role 'inner'")


@dataclass(frozen=True)
class MAMLPlusPlusOptions(MAMLOptions):
    """MAML++ (Antoniou et al. 2019): MAML with each of the paper's tricks a switch (all on by
    default), so an ablation is a configuration."""

    inner_steps: int = option(5, minimum=1, help="inner steps per task during meta-training")
    multi_step_loss: bool = option(
        True, help="MSL: the query loss after every inner step, weighted, annealed to the last step's"
    )
    multi_step_loss_steps: int = option(
        5000, minimum=1, help="meta-steps over which MSL's weights anneal; afterwards the last step's loss only"
    )
    learned_inner_lr: bool = option(True, help="LSLR: a learned inner rate per layer and step, from inner_lr")
    per_step_batch_norm: bool = option(
        True, help="BNWB: batch-norm weights and biases per inner step, meta-learned, not adapted"
    )
    first_order_steps: int = option(
        0, minimum=0, help="DA: first-order meta-gradients for the first N meta-steps, then second order"
    )
    cosine_annealing: bool = option(True, help="CA: cosine annealing of the outer rate to min_outer_lr")
    cosine_steps: int = option(50000, minimum=1, help="meta-steps of the cosine annealing")
    min_outer_lr: float = option(1e-5, minimum=0, help="the outer rate at the end of the cosine annealing")

    def validate(self) -> None:
        if self.recompute_inner:
            raise ConfigError(
                "mamlpp does not recompute its inner steps (its multi-step loss reads every step's weights): "
                "set recompute_inner = false"
            )


@dataclass(frozen=True)
class ReptileOptions(InnerLoopOptions):
    """Reptile, with the published protocol's inner Adam and mini-batches as options."""

    inner_steps: int = option(5, minimum=1, help="inner steps per task during meta-training")
    inner_optimizer: str = option(
        "sgd",
        choices=("sgd", "adam"),
        help="sgd: p - inner_lr * grad; adam: TF1's Adam, state carried from task to task",
    )
    inner_batch_size: int | None = option(
        None, minimum=1, help="support examples per inner step in meta-training (None: all)"
    )
    test_inner_batch_size: int | None = option(
        None, minimum=1, help="support examples per inner step in evaluate and adapt (None: inner_batch_size)"
    )
    adam_beta1: float = option(0.0, minimum=0, maximum=1, below_maximum=True, help="the inner Adam's beta1")
    adam_beta2: float = option(0.999, minimum=0, maximum=1, below_maximum=True, help="the inner Adam's beta2")
    adam_epsilon: float = option(1e-8, minimum=0, exclusive=True, help="the inner Adam's epsilon")

    @property
    def evaluation_batch_size(self) -> int | None:
        """``test_inner_batch_size``, or ``inner_batch_size`` when it is unset."""
        return self.inner_batch_size if self.test_inner_batch_size is None else self.test_inner_batch_size


@dataclass(frozen=True)
class ProtoNetOptions(BatchingOptions):
    """Prototypical Networks."""

    distance: str = option(
        "euclidean",
        choices=("euclidean", "cosine"),
        help="logits: minus the squared Euclidean distance, or the cosine similarity",
    )


@dataclass(frozen=True)
class FineTuneOptions(BatchingOptions):
    """The fine-tuning baseline."""

    inner_lr: float = option(0.01, minimum=0, exclusive=True, help="fine-tuning learning rate")
    test_inner_steps: int = option(10, minimum=0, help="fine-tuning steps in evaluate and adapt")
    finetune: str = option("all", choices=("all", "head"), help="all: features and head; head: features frozen")
    regularization: str = option(
        "none",
        choices=REGULARIZATION,
        help="fine-tuning objective: support loss + strength/2 * |w|^2 (l2) or |w - w_start|^2 (l2-sp)",
    )
    regularization_strength: float = option(0.01, minimum=0, help="lambda, the weight of the regulariser")

    @property
    def evaluation_steps(self) -> int:
        return self.test_inner_steps


@dataclass(frozen=True)
class RelationNetOptions(BatchingOptions):
    """Relation Networks (Sung et al. 2018)."""

    relation: str = option(
        "auto",
        choices=("auto", "conv", "mlp"),
        help="relation module: conv (two conv blocks on feature maps, conv4 only), mlp (vector embeddings), "
        "auto (conv for conv4, else mlp)",
    )
    relation_filters: int = option(
        64, minimum=1, help="channels of the relation module's two conv blocks (units of the mlp's two layers)"
    )
    relation_hidden: int = option(8, minimum=1, help="units of the relation module's hidden fully connected layer")


@dataclass(frozen=True)
class R2D2Options(BatchingOptions):
    """R2-D2: ridge regression solved in closed form (Bertinetto et al. 2019)."""

    init_lambda: float = option(50.0, minimum=0, exclusive=True, help="initial ridge penalty lambda")
    learn_lambda: bool = option(True, help="meta-learn lambda (false: keep init_lambda)")
    init_scale: float = option(1e-4, help="initial scale alpha of the logits alpha * (x @ W) + beta")
    init_offset: float = option(0.0, help="initial offset beta of the logits")


@dataclass(frozen=True)
class MetaLSTMOptions(BatchingOptions):
    """The LSTM meta-learner (Ravi and Larochelle 2017)."""

    inner_steps: int = option(5, minimum=1, help="LSTM updates of the learner per task during meta-training")
    test_inner_steps: int | None = option(None, minimum=0, help="updates in evaluate and adapt (None: inner_steps)")
    transductive: bool = option(
        True, help="evaluation predicts all query examples in one batch; false: each with the support set"
    )
    hidden_size: int = option(20, minimum=1, help="units of the first, coordinate-wise LSTM")

    @property
    def evaluation_steps(self) -> int:
        """``test_inner_steps``, or ``inner_steps`` when it is unset."""
        return self.inner_steps if self.test_inner_steps is None else self.test_inner_steps


# -- outer optimizers ----------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleOptions(Options):
    """Weight decay and the learning-rate schedule every standard outer optimizer has
    (see :func:`metaplug.contract.schedules.learning_rate`)."""

    weight_decay: float = option(0.0, minimum=0, help="L2 penalty added to the gradient")
    decay_every: int = option(0, minimum=0, help="multiply the rate by decay_rate every N steps (0: never)")
    decay_rate: float = option(0.5, minimum=0, maximum=1, exclusive=True, help="factor of the step decay")
    final_lr: float | None = option(None, minimum=0, help="anneal the rate linearly to this value")
    anneal_steps: int = option(0, minimum=0, help="steps over which the rate is annealed to final_lr")
    anneal: str = option(
        "linear", choices=ANNEALING, help="the shape of the annealing to final_lr: " + ", ".join(ANNEALING)
    )

    @property
    def constant(self) -> bool:
        """Whether the learning rate never changes (neither step decay nor annealing)."""
        return not self.decay_every and self.final_lr is None

    def validate(self) -> None:
        if self.final_lr is None and self.anneal_steps:
            raise ConfigError(f"anneal_steps ({self.anneal_steps!r}) needs final_lr, the learning rate to anneal to")
        if self.final_lr is not None and self.anneal_steps < 1:
            raise ConfigError(f"anneal_steps must be at least 1 with final_lr, got {self.anneal_steps!r}")
        if self.final_lr is not None and self.decay_every:
            raise ConfigError("final_lr (linear annealing) and decay_every (step decay) cannot be combined")


@dataclass(frozen=True)
class SGDOptions(ScheduleOptions):
    """SGD, optionally with (Nesterov) momentum."""

    momentum: float = option(0.0, minimum=0, help="momentum factor (PyTorch's form, no dampening)")
    nesterov: bool = option(False, help="Nesterov momentum")

    def validate(self) -> None:
        super().validate()
        if self.nesterov and not self.momentum:
            raise ConfigError("nesterov needs a positive momentum")


@dataclass(frozen=True)
class AdamOptions(ScheduleOptions):
    """Adam (Kingma and Ba 2015), PyTorch's form."""

    betas: tuple[float, float] = option(
        (0.9, 0.999), minimum=0, maximum=1, below_maximum=True, help="decay rates of the first and second moments"
    )
    eps: float = option(1e-8, minimum=0, exclusive=True, help="added to the bias-corrected root")
    amsgrad: bool = option(False, help="use the maximum of past second moments (Reddi et al. 2018)")


@dataclass(frozen=True)
class RMSpropOptions(ScheduleOptions):
    """RMSprop, PyTorch's form."""

    alpha: float = option(0.99, minimum=0, maximum=1, below_maximum=True, help="decay of the squared-gradient average")
    eps: float = option(1e-8, minimum=0, exclusive=True, help="added to the root")
    momentum: float = option(0.0, minimum=0, help="momentum factor")
    centered: bool = option(False, help="normalise by the variance instead of the second moment")


# -- models --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MLPOptions(Options):
    """The ``mlp`` model (docs/models.md)."""

    hidden: tuple[int, ...] = option((40, 40), minimum=1, help="sizes of the hidden layers, e.g. [40, 40]")

    def validate(self) -> None:
        if not self.hidden:
            raise ConfigError("hidden must name at least one layer size")


@dataclass(frozen=True)
class Conv4Options(Options):
    """The ``conv4`` model (docs/models.md)."""

    filters: int = option(64, minimum=1, help="channels of every convolution")
    pooling: str = option(
        "max", choices=("max", "stride"), help="max: 2x2 max-pooling per block; stride: stride-2 convolutions"
    )


@dataclass(frozen=True)
class ResNet12Options(Options):
    """The ``resnet12`` model (docs/models.md)."""

    channels: tuple[int, ...] = option((64, 160, 320, 640), minimum=1, help="widths of the four residual blocks")
    leak: float = option(0.1, minimum=0, help="negative slope of the leaky ReLUs")
    drop_rate: float = option(
        0.0,
        minimum=0,
        maximum=1,
        below_maximum=True,
        help="meta-training only: dropout after blocks 0-1, DropBlock ramping to it after 2-3 (0: off; MetaOptNet 0.1)",
    )
    dropblock_size: int = option(5, minimum=1, help="side of DropBlock's square blocks (at most the feature map's)")
    dropblock_ramp: int = option(
        20000, minimum=1, help="meta-training steps over which DropBlock's rate grows linearly to drop_rate"
    )

    def validate(self) -> None:
        if len(self.channels) != 4:
            raise ConfigError(f"channels must be four widths, got {self.channels!r}")


__all__ = [
    "ANNEALING",
    "BATCHING",
    "FREEZE_DURING",
    "PRECISION",
    "REGULARIZATION",
    "AdamOptions",
    "BatchingOptions",
    "Conv4Options",
    "FOMAMLOptions",
    "FineTuneOptions",
    "InnerLoopOptions",
    "MAMLOptions",
    "MAMLPlusPlusOptions",
    "MLPOptions",
    "MetaLSTMOptions",
    "MetaSGDOptions",
    "ProtoNetOptions",
    "R2D2Options",
    "RMSpropOptions",
    "RelationNetOptions",
    "ReptileOptions",
    "ResNet12Options",
    "SGDOptions",
    "ScheduleOptions",
    "check_precision",
    "require_batching_options",
]
