"""Torch state dicts as ``--init-weights``: read with ``weights_only=True``, matched to the
layout by name (the module's own ``state_dict()`` or a metaplug-style ``model.`` prefix)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_helpers import SINUSOID, regression_batch

from metaplug.contract.interfaces import ModelSpec
from metaplug.errors import ConfigError
from metaplug.experiment import weights
from metaplug_torch.algorithms.maml import MAML
from metaplug_torch.backend import Backend

MLP = ModelSpec("mlp", (1,), 1, {"hidden": (8, 8)})


def fresh(seed: int) -> MAML:
    backend = Backend(device="cpu")
    backend.seed(seed)
    return MAML(backend=backend, model=backend.build_model(MLP), spec=SINUSOID)


def predictions(algorithm: MAML) -> np.ndarray:
    batch = regression_batch(tasks=1)
    return algorithm.adapt(batch.support_x[0], batch.support_y[0], steps=0).predict(batch.query_x[0])


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_a_saved_state_dict_of_the_model_itself_loads_exactly(tmp_path, suffix):
    source = Backend(device="cpu").build_model(MLP)
    torch.save(source.state_dict(), tmp_path / f"weights{suffix}")
    algorithm = fresh(1)
    report = weights.load(algorithm, tmp_path / f"weights{suffix}", backends=[Backend])
    assert report.complete and len(report.loaded) == 6
    for name, value in source.state_dict().items():
        assert np.array_equal(algorithm.state_dict()[f"model.{name}"], value.numpy()), name
    with torch.no_grad():
        expected = source(torch.from_numpy(regression_batch(tasks=1).query_x[0])).numpy()
    np.testing.assert_array_equal(predictions(algorithm), expected)


def test_nested_checkpoints_keep_their_model_entries_and_bfloat16_widens(tmp_path):
    source = fresh(2)
    state = {k: torch.from_numpy(v) for k, v in source.state_dict().items() if k.startswith("model.")}
    state["model.head.bias"] = state["model.head.bias"].to(torch.bfloat16)
    nested = {"model": {k[len("model.") :]: v for k, v in state.items()}, "optimizer": {"step": torch.tensor(3)}}
    torch.save(nested, tmp_path / "checkpoint.pt")
    algorithm = fresh(3)
    report = weights.load(algorithm, tmp_path / "checkpoint.pt")  # the installed backends read it
    assert report.complete and report.ignored == ("optimizer.step",)
    assert algorithm.state_dict()["model.head.bias"].dtype == np.float32
    assert np.array_equal(
        algorithm.state_dict()["model.features.0.weight"], source.state_dict()["model.features.0.weight"]
    )


class Pickled:
    """Not a tensor: weights_only=True refuses to unpickle it."""


def test_pickled_objects_are_refused_with_one_line(tmp_path):
    torch.save({"features.0.weight": Pickled()}, tmp_path / "unsafe.pt")
    with pytest.raises(ConfigError, match=r"not a plain torch state dict: torch.load\(weights_only=True\) refuses"):
        weights.load(fresh(0), tmp_path / "unsafe.pt", backends=[Backend])
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ConfigError, match="holds a Tensor, not a state dict"):
        weights.load(fresh(0), tmp_path / "tensor.pt", backends=[Backend])
    (tmp_path / "broken.pt").write_bytes(b"not a zip file")
    with pytest.raises(ConfigError, match="broken.pt"):
        weights.load(fresh(0), tmp_path / "broken.pt", backends=[Backend])
