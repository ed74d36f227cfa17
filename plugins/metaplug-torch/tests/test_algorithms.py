"""The algorithms' formulas (docs/algorithms.md) against small independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_helpers import IMAGES, SINUSOID, build, image_batch, regression_batch


def test_protonet_logits_are_negative_squared_distances_to_class_means():
    batch = image_batch(tasks=1, shots=2, queries=3)
    for distance in ("euclidean", "cosine"):
        algorithm = build("protonet", IMAGES, distance=distance)
        features = algorithm.model.module.features
        with torch.no_grad():
            both = torch.from_numpy(np.concatenate([batch.support_x[0], batch.query_x[0]])).double()
            embedded = features(both).numpy()
        support, query = embedded[:6], embedded[6:]
        prototypes = np.stack([support[batch.support_y[0] == c].mean(0) for c in range(3)])
        if distance == "euclidean":
            expected = -((query[:, None, :] - prototypes[None]) ** 2).sum(-1)
        else:
            unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
            expected = unit(query) @ unit(prototypes).T
        logits = algorithm.adapt(batch.support_x[0], batch.support_y[0]).predict(batch.query_x[0])
        np.testing.assert_allclose(logits, expected, rtol=1e-10, atol=1e-10)
        loss = algorithm.evaluate(batch)
        ce = F.cross_entropy(torch.from_numpy(expected), torch.from_numpy(batch.query_y[0])).item()
        assert math.isclose(loss["loss"][0], ce, rel_tol=1e-10) and np.isnan(loss["loss_before"][0])


def test_reptile_moves_to_the_mean_of_the_adapted_weights():
    batch = regression_batch(tasks=3)
    algorithm = build("reptile", SINUSOID, optimizer="sgd", lr=1.0, inner_steps=3, inner_lr=0.02)
    theta = {k: v.detach().clone() for k, v in algorithm.params.items()}
    adapted = []
    for t in range(batch.num_tasks):
        phi = {k: v.clone().requires_grad_() for k, v in theta.items()}
        sx, sy = (torch.from_numpy(a[t]).double() for a in (batch.support_x, batch.support_y))
        for _ in range(3):
            loss = F.mse_loss(torch.func.functional_call(algorithm.model.module, phi, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(phi.values()))
            phi = {k: (v - 0.02 * g).detach().requires_grad_() for (k, v), g in zip(phi.items(), grads, strict=True)}
        adapted.append(phi)
    algorithm.meta_train_step(batch)  # SGD with lr 1: theta <- theta - (theta - mean phi) = mean phi
    for name, value in algorithm.params.items():
        expected = torch.stack([phi[name].detach() for phi in adapted]).mean(0)
        np.testing.assert_allclose(value.detach().numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)


def test_finetune_pretrains_on_split_wide_classes_and_adapts_a_zero_head():
    batch = image_batch(tasks=2)
    algorithm = build("finetune", IMAGES, finetune="head")
    features = algorithm.model.module.features
    weight, bias = (algorithm.extra[f"pretrain.head.{k}"].detach() for k in ("weight", "bias"))
    expected = []
    with torch.no_grad():
        for t in range(batch.num_tasks):  # one batch per episode: support and query together
            x = torch.from_numpy(np.concatenate([batch.support_x[t], batch.query_x[t]])).double()
            labels = batch.classes[t][np.concatenate([batch.support_y[t], batch.query_y[t]])]
            expected.append(F.cross_entropy(F.linear(features(x), weight, bias), torch.from_numpy(labels)).item())
    assert math.isclose(algorithm.meta_train_step(batch)["loss"], float(np.mean(expected)), rel_tol=1e-12)
    result = algorithm.evaluate(batch, steps=5)
    np.testing.assert_allclose(result["loss_before"], math.log(3), rtol=1e-12)
    assert np.all(result["loss"] != result["loss_before"])
    features_before = {k: v.detach().clone() for k, v in algorithm.params.items() if k.startswith("features.")}
    algorithm.adapt(batch.support_x[0], batch.support_y[0], steps=3)
    for name, value in features_before.items():  # adaptation never touches the meta-parameters
        assert torch.equal(algorithm.params[name].detach(), value)


def test_anil_adapts_only_the_head():
    batch = regression_batch(tasks=1)
    algorithm = build("anil", SINUSOID, inner_lr=0.1)
    params, data = algorithm.detached_parameters(), algorithm.episode_tensors(batch)
    adapted = algorithm.adapt_task(
        params, {}, algorithm.task_inputs(params, data.support_x[0]), data.support_y[0], 2, second_order=False
    )
    assert set(adapted) == {"head.weight", "head.bias"}


def test_an_algorithms_options_must_extend_batching_options():
    from dataclasses import dataclass

    from metaplug import Options, option
    from metaplug_torch.algorithms.base import MetaLearner

    @dataclass(frozen=True)
    class Plain(Options):
        x: int = option(1)

    with pytest.raises(TypeError, match="Options must extend metaplug.contract.hyperparameters.BatchingOptions"):

        class Bad(MetaLearner):
            Options = Plain
