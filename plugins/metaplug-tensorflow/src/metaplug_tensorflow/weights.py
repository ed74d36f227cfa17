"""Keras weight files for ``--init-weights``: ``model.save_weights("x.weights.h5")``, read
with ``h5py`` into metaplug's names and shared layout (docs/models.md).

A Keras layer's variables are named ``<layer names from the model down, joined by
dots>.<role>``, the role by the layer's kind: dense and convolution layers have ``weight``
(the kernel, transposed to the shared layout: ``(out, in)``, ``(out, in, h, w)``) and
``bias``; batch normalisation has ``weight`` (gamma), ``bias`` (beta), ``running_mean``
and ``running_var``; layer normalisation ``weight`` and ``bias``; any other layer its
variables by position (``<layer>.0``, ``<layer>.1``...). So a Keras model whose layers are
named as the layout (a ``Sequential`` named ``features`` holding dense layers ``0`` and
``1``, then a dense layer ``head``) gives exactly the ``mlp`` weights. Both the Keras 3
format (``layers/<kind>/vars/<i>``, the layer's name in the ``vars`` group's ``name``
attribute) and the legacy Keras 2 HDF5 format (``layer_names`` and ``weight_names``
attributes) are read.

When the run's model is itself a Keras model (:class:`~metaplug_tensorflow.functional.KerasModel`,
``--model module:factory``), Keras reads the file into it (``load_weights``: Keras's own
matching of its layers) and the entries come back under the model's own weight names
(``features.0.kernel``...), so a Keras model starts from its own ``save_weights`` file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from metaplug.errors import ConfigError
from metaplug_tensorflow.layout import to_shared

FORMATS: tuple[str, ...] = (".weights.h5", ".h5")
"""File suffixes of Keras weight files."""

ROLES: dict[str, tuple[str, ...]] = {
    "dense": ("weight", "bias"),
    "conv1d": ("weight", "bias"),
    "conv2d": ("weight", "bias"),
    "conv3d": ("weight", "bias"),
    "batch_normalization": ("weight", "bias", "running_mean", "running_var"),
    "layer_normalization": ("weight", "bias"),
}
"""Variable names by Keras layer kind (the snake-case class name Keras 3 files group by)."""

LEGACY_ROLES = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def read_weights(path: str | Path, model: Any = None) -> dict[str, np.ndarray]:
    """The weights of the Keras file at ``path`` by layout name, in the shared layout (by
    ``model``'s own names when it is a Keras model)."""
    from metaplug_tensorflow.functional import KerasModel

    if isinstance(model, KerasModel):
        return _through_keras(Path(path), model)
    import h5py

    try:
        with h5py.File(Path(path), "r") as handle:
            root = handle.get("model_weights", handle)
            if "layer_names" in root.attrs:
                return _legacy(root)
            arrays: dict[str, np.ndarray] = {}
            _walk(root, [], "", arrays)
            return arrays
    except OSError as exc:
        raise ConfigError(f"cannot read {path} as a Keras weights file (HDF5): {exc}") from None


def _walk(group: Any, path: list[str], kind: str, into: dict[str, np.ndarray]) -> None:
    """Collect the variables of ``group`` (a layer of ``kind`` at ``path``) and of its sub-layers."""
    variables = group.get("vars")
    if variables is not None and len(variables):
        values = [np.asarray(variables[k]) for k in sorted(variables, key=int)]
        roles = ROLES.get(re.sub(r"_\d+$", "", kind), ())
        if len(values) > len(roles) or (kind.startswith("batch_normalization") and len(values) != len(roles)):
            roles = tuple(str(i) for i in range(len(values)))
        for role, value in zip(roles, values, strict=False):
            into[".".join([*path, role])] = to_shared(value) if role == "weight" and value.ndim > 1 else value
    for key in group:
        if key in ("vars", "optimizer"):
            continue
        child = group[key]
        if not hasattr(child, "keys"):
            continue
        if key == "layers":
            for sub in child:
                _walk(child[sub], [*path, _layer_name(child[sub], sub)], sub, into)
        else:  # a sub-layer held in an attribute of a custom layer
            _walk(child, [*path, _layer_name(child, key)], key, into)


def _layer_name(group: Any, key: str) -> str:
    variables = group.get("vars")
    name = variables.attrs.get("name") if variables is not None else None
    return _text(name) if name is not None else key


def _legacy(root: Any) -> dict[str, np.ndarray]:
    """Keras 2 HDF5: ``layer_names`` lists the layers, each ``weight_names`` its variables
    (``<layer path>/<kernel|bias|...>:0``)."""
    arrays: dict[str, np.ndarray] = {}
    for layer in (_text(n) for n in root.attrs["layer_names"]):
        group = root[layer]
        for weight in (_text(n) for n in group.attrs.get("weight_names", [])):
            *parts, last = weight.split(":")[0].split("/")
            role = LEGACY_ROLES.get(last, last)
            value = np.asarray(group[weight])
            arrays[".".join([*parts, role])] = to_shared(value) if role == "weight" and value.ndim > 1 else value
    return arrays


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _through_keras(path: Path, model: Any) -> dict[str, np.ndarray]:
    """``path`` loaded by Keras into ``model``'s Keras model, read back by the model's weight
    names, and the model's weights restored (the host assigns what it accepts)."""
    saved = [v.numpy() for v in model.variables]
    try:
        model.keras_model.load_weights(str(path))
        return {name: to_shared(v.numpy()) for name, v in zip(model.names, model.variables, strict=True)}
    except (ValueError, OSError, KeyError, TypeError) as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(f"Keras cannot load {path} into the model: {reason}") from None
    finally:
        for variable, value in zip(model.variables, saved, strict=True):
            variable.assign(value)
