"""Any Keras 3 model as a pure function of its weights (:class:`KerasModel`).

An inner loop must run the model on adapted weights without assigning them to its
variables (assignment cuts the gradient). Keras 3 allows exactly that: inside a
``keras.StatelessScope`` every variable reads the tensor it is mapped to, and any
state update (batch norm's moving averages, a dropout seed) is recorded in the scope
and dropped. Gradients, second-order ones included, flow through the mapped tensors.

Each task runs as its own call with ``training=True``, so a ``BatchNormalization``
layer normalises every task with its own statistics (and never updates its moving
averages), as metaplug's standard models do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metaplug.contract.interfaces import ModelSpec
from metaplug.errors import ConfigError
from metaplug_tensorflow._tf import tf
from metaplug_tensorflow.models import FunctionalModel

keras = tf.keras

PARTS = ("features", "head")


def is_keras_model(model: Any) -> bool:
    """Whether ``model`` is a Keras layer (a ``keras.Model`` is one)."""
    return isinstance(model, keras.layers.Layer)


class KerasModel(FunctionalModel):
    """A Keras model's trainable weights (``tf.Variable``) and stateless forwards.

    A model with ``features`` and ``head`` layer attributes whose weights are all the
    model's and whose output is ``head(features(x))`` is split there (ANIL adapts the
    head, ProtoNets embed with the features, fine-tuning replaces the head): its weights
    are named ``features.<path>`` then ``head.<path>``. Any other model is one piece, its
    weights named by their path in it; its whole output is its embedding.

    Weights are named by position, not by Keras's layer names (which count layers
    process-wide, so the same model built twice would not match its own checkpoint):
    ``features.0.kernel``, ``features.0.bias``, ``features.1.gamma``..., ``head.kernel``,
    ``head.bias`` (``0.kernel``... for a model in one piece), in the order of the model's
    ``trainable_variables``. The layout is TensorFlow's (``kernel`` is ``(in, out)``);
    ``state_dict`` converts it to the shared layout like the standard models'.
    """

    def __init__(self, model: Any, spec: ModelSpec, layers: dict[str, Any]) -> None:
        pieces = layers or {"": model}
        names: list[str] = []
        self.pieces: list[tuple[Any, list[Any]]] = []
        for prefix, layer in pieces.items():
            owned = list(layer.trainable_variables)
            names += [(f"{prefix}." if prefix else "") + name for name in positional_names(owned, layer)]
            self.pieces.append((layer, owned))
        variables = [v.value for _, owned in self.pieces for v in owned]
        super().__init__(spec, tuple(names), variables)
        self.keras_model = model
        self.has_parts = bool(layers)
        head = layers.get("head")
        self.linear_head = (
            isinstance(head, keras.layers.Dense) and head.use_bias and head.activation is keras.activations.linear
        )

    @classmethod
    def wrap(cls, model: Any, spec: ModelSpec, example_shape: Sequence[int]) -> KerasModel:
        """``model`` built for examples of ``example_shape`` (TensorFlow's layout), checked:
        weights of one floating dtype, not empty, parts as the class docstring says."""
        if not model.built or not model.trainable_variables:
            try:
                model(tf.zeros([2, *example_shape], model.compute_dtype), training=True)
            except Exception as exc:  # the user's call(): any error is a bad model
                raise ConfigError(
                    f"the Keras model fails on a batch of examples of shape {tuple(example_shape)}: "
                    f"{type(exc).__name__}: {first_line(exc)}"
                ) from None
        weights = list(model.trainable_variables)
        if not weights:
            raise ConfigError(f"the Keras model {model.name!r} has no trainable weights to meta-learn")
        dtypes = sorted({tf.as_dtype(v.dtype).name for v in weights})
        if len(dtypes) > 1 or not tf.as_dtype(dtypes[0]).is_floating:
            raise ConfigError(f"the Keras model's weights must share one floating dtype, got {', '.join(dtypes)}")
        return cls(model, spec, model_parts(model))

    @property
    def dtype(self) -> tf.DType:
        """The dtype of the weights (the algorithm computes in it)."""
        return self.variables[0].dtype

    @property
    def head_index(self) -> int:
        return len(self.pieces[0][1]) if self.has_parts else len(self.names)

    def require_parts(self, algorithm: str) -> None:
        if not self.has_parts:
            layers = ", ".join(layer.name for layer in self.keras_model.layers) or "none"
            raise ConfigError(
                f"{algorithm} needs a Keras model with a 'features' layer (everything before the last layer) "
                f"and a 'head' layer (the last one) as attributes, with call(x) == head(features(x)); "
                f"{type(self.keras_model).__name__} has layers {layers}: set self.features = keras.Sequential([...]) "
                "and self.head = keras.layers.Dense(...) in its __init__"
            )

    def embed(
        self, params: Sequence[tf.Tensor], x: tf.Tensor, per_task: bool = False, vectorized: bool = True
    ) -> tf.Tensor:
        return run_per_task(*self.pieces[0], list(params), x, per_task)

    def head(self, params: Sequence[tf.Tensor], h: tf.Tensor, per_task: bool = False) -> tf.Tensor:
        return run_per_task(*self.pieces[1], list(params), h, per_task)

    def __call__(
        self, params: Sequence[tf.Tensor], x: tf.Tensor, per_task: bool = False, vectorized: bool = True
    ) -> tf.Tensor:
        if self.has_parts:
            return super().__call__(params, x, per_task, vectorized)
        return self.embed(params, x, per_task, vectorized)


def model_parts(model: Any) -> dict[str, Any]:
    """``{"features": ..., "head": ...}`` when ``model`` splits there (see :class:`KerasModel`), else ``{}``."""
    layers: dict[str, Any] = {name: getattr(model, name, None) for name in PARTS}
    if not all(is_keras_model(layer) for layer in layers.values()):
        return {}
    owned = [id(v) for layer in layers.values() for v in layer.trainable_variables]
    if sorted(owned) != sorted(id(v) for v in model.trainable_variables) or len(set(owned)) != len(owned):
        return {}
    return layers


def positional_names(variables: Sequence[Any], layer: Any) -> list[str]:
    """Names that do not depend on Keras's process-wide layer counters (``dense_7``):
    ``<i>.<variable>`` with ``i`` the position of the owning layer among those holding
    ``variables``, or just ``<variable>`` for the weights of ``layer`` itself."""
    root = getattr(layer, "path", None) or layer.name
    owners: dict[str, int] = {}
    names = []
    for v in variables:
        owner, _, short = v.path.rpartition("/")
        if owner == root:
            names.append(short)
        else:
            names.append(f"{owners.setdefault(owner, len(owners))}.{short}")
    return names


def stateless(layer: Any, variables: list[Any], values: Sequence[tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    """``layer(x, training=True)`` with its ``variables`` reading ``values``; state updates dropped."""
    with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
        return layer(x, training=True)


def run_per_task(layer: Any, variables: list[Any], params: list[tf.Tensor], x: tf.Tensor, per_task: bool) -> tf.Tensor:
    """``layer`` on each task of ``x`` ``(T, N, ...)`` (weights with a task axis when
    ``per_task``), outputs stacked to ``(T, N, ...)``."""
    outputs = []
    for t in range(x.shape[0]):
        values = [p[t] for p in params] if per_task else params
        outputs.append(stateless(layer, variables, values, x[t]))
    return tf.stack(outputs)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
