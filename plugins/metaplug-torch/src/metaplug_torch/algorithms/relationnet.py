"""Relation Networks (Sung et al. 2018): a learned relation module scores (class, query) pairs."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from metaplug.contract.hyperparameters import RelationNetOptions
from metaplug.errors import ConfigError
from metaplug_torch.algorithms.support_set import SupportSetLearner
from metaplug_torch.functional import Params, one_hot
from metaplug_torch.models import ConvBlock, ConvStack, batch_norm

PREFIX = "relation."
CONV = ("conv1", "conv2")
DENSE = ("dense1", "dense2")


def pooled(height: int, width: int) -> tuple[int, int]:
    """A map's size after the relation module's 2x2 max-pooling: halved, unless a side is
    a single pixel (then the map is not pooled)."""
    return (height // 2, width // 2) if min(height, width) >= 2 else (height, width)


def feature_map(model: torch.nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(channels, height, width)`` of a standard conv4's features (flattened channel-first),
    or ``None`` for any other model."""
    features = getattr(model, "features", None)
    if not isinstance(features, ConvStack) or len(input_shape) != 3:
        return None
    height, width = input_shape[1:]
    channels = 0
    for block in features:
        assert isinstance(block, ConvBlock)
        height, width = (height // 2, width // 2) if block.pool else ((height + 1) // 2, (width + 1) // 2)
        channels = block.conv.out_channels
    return channels, height, width


class RelationNet(SupportSetLearner):
    """Relation Networks: the embedding (``features``) of each class's support examples,
    summed per class, is paired with each query embedding; a learned relation module scores
    each pair in [0, 1] and is trained with the mean squared error against the one-hot
    labels, as in the paper. Classification only.

    ``relation="conv"`` (the paper's module; ``"auto"`` picks it for conv4): the pair's
    feature maps, concatenated along the channels, go through two blocks of 3x3 convolution
    (padding 1, ``relation_filters`` channels), batch norm, ReLU and 2x2 max-pooling (a
    1x1 map is not pooled), then a ReLU layer of ``relation_hidden`` units and a sigmoid
    unit. ``relation="mlp"`` (vector embeddings of other models): the concatenated vectors
    go through two ReLU layers of ``relation_filters`` units instead of the conv blocks.

    As in the authors' code, support and query examples are embedded in separate batches
    (batch norm sees each set's statistics) and the relation module normalises over the
    pairs of a task. Its meta-parameters are saved as ``relation.*``. There is no inner
    loop, so ``loss_before`` is NaN.
    """

    name = "relationnet"
    problems = ("classification",)
    Options = RelationNetOptions
    options: RelationNetOptions
    embedding_size: int
    feature_map: tuple[int, int, int] | None
    """``(channels, height, width)`` of the features (conv4), else ``None``."""
    kind: str
    """The relation module: ``"conv"`` or ``"mlp"``."""

    def check_model(self) -> None:
        """The relation module needs a vector per example (a flattened map for ``conv``)."""
        shape = self.probe_model(lambda x: self.model.embed(self.params, x))
        if len(shape) != 2:
            raise ConfigError(f"relationnet embeds each example as a vector; the model's features give shape {shape}")
        self.embedding_size = shape[1]
        self.feature_map = feature_map(self.model.module, tuple(self.spec.input_shape))
        if self.options.relation == "conv" and self.feature_map is None:
            raise ConfigError("relation 'conv' needs the conv4 model (feature maps); use relation 'mlp' or 'auto'")
        if self.options.relation == "auto":
            self.kind = "mlp" if self.feature_map is None else "conv"
        else:
            self.kind = self.options.relation

    def extra_parameters(self) -> dict[str, torch.Tensor]:
        """Initialised as Sung et al.'s ``weights_init``: convolutions N(0, 2 / (9 * out)),
        zero biases; batch norm 1 and 0; the fully connected layers N(0, 0.01^2), biases 1.
        The mlp's two layers are initialised like the convolutions (N(0, 2 / out))."""
        filters, hidden = self.options.relation_filters, self.options.relation_hidden
        found: dict[str, torch.Tensor] = {}
        if self.kind == "conv":
            assert self.feature_map is not None
            channels, height, width = self.feature_map
            for name, fan in zip(CONV, (2 * channels, filters), strict=True):
                found[f"{PREFIX}{name}.weight"] = torch.randn(
                    filters, fan, 3, 3, dtype=self.dtype, device=self.device
                ) * math.sqrt(2.0 / (9 * filters))
                found[f"{PREFIX}{name}.bias"] = torch.zeros(filters, dtype=self.dtype, device=self.device)
                found[f"{PREFIX}{name}.norm.weight"] = torch.ones(filters, dtype=self.dtype, device=self.device)
                found[f"{PREFIX}{name}.norm.bias"] = torch.zeros(filters, dtype=self.dtype, device=self.device)
            height, width = pooled(*pooled(height, width))
            flat = filters * height * width
        else:
            for name, fan in zip(DENSE, (2 * self.embedding_size, filters), strict=True):
                found[f"{PREFIX}{name}.weight"] = torch.randn(
                    filters, fan, dtype=self.dtype, device=self.device
                ) * math.sqrt(2.0 / filters)
                found[f"{PREFIX}{name}.bias"] = torch.zeros(filters, dtype=self.dtype, device=self.device)
            flat = filters
        found[PREFIX + "fc1.weight"] = torch.randn(hidden, flat, dtype=self.dtype, device=self.device) * 0.01
        found[PREFIX + "fc1.bias"] = torch.ones(hidden, dtype=self.dtype, device=self.device)
        found[PREFIX + "fc2.weight"] = torch.randn(1, hidden, dtype=self.dtype, device=self.device) * 0.01
        found[PREFIX + "fc2.bias"] = torch.ones(1, dtype=self.dtype, device=self.device)
        return found

    def relation_scores(self, relation: Params, pairs: torch.Tensor) -> torch.Tensor:
        """Scores ``(P,)`` in [0, 1] of pairs ``(P, 2 * embedding)`` (class first, then query)."""
        h = pairs
        if self.kind == "conv":
            assert self.feature_map is not None
            channels, height, width = self.feature_map
            h = h.reshape(-1, 2 * channels, height, width)
            for name in CONV:
                h = F.conv2d(h, relation[f"{PREFIX}{name}.weight"], relation[f"{PREFIX}{name}.bias"], padding=1)
                h = F.relu(
                    batch_norm(h, relation[f"{PREFIX}{name}.norm.weight"], relation[f"{PREFIX}{name}.norm.bias"])
                )
                if min(h.shape[-2:]) >= 2:
                    h = F.max_pool2d(h, 2)
            h = h.flatten(1)
        else:
            for name in DENSE:
                h = F.relu(F.linear(h, relation[f"{PREFIX}{name}.weight"], relation[f"{PREFIX}{name}.bias"]))
        h = F.relu(F.linear(h, relation[PREFIX + "fc1.weight"], relation[PREFIX + "fc1.bias"]))
        return torch.sigmoid(F.linear(h, relation[PREFIX + "fc2.weight"], relation[PREFIX + "fc2.bias"]))[:, 0]

    def class_features(self, params: Params, sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
        """``(ways, embedding)``: the sum of each class's support embeddings (zero if absent)."""
        member = one_hot(sy, self.spec.output_size, sx.dtype)
        return member.T @ self.model.embed(params, sx)

    def scores(self, shared: tuple[Params, Params], classes: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(Q, ways)`` relation scores of the examples ``x`` to each class."""
        params, relation = shared
        queries = self.model.embed(params, x)
        ways, size = classes.shape
        pairs = torch.cat(
            [classes.unsqueeze(0).expand(len(queries), ways, size), queries.unsqueeze(1).expand(-1, ways, size)], -1
        )
        return self.relation_scores(relation, pairs.reshape(-1, 2 * size)).reshape(-1, ways)

    def logits(
        self, shared: tuple[Params, Params], sx: torch.Tensor, sy: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """Relation scores ``(N, ways)``, ``-inf`` for classes absent from the support set."""
        return self.predictor(shared, sx, sy)(x)

    def task_loss(
        self, shared: tuple[Params, Params], sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean squared error of the relation scores against the one-hot labels, over the
        query examples and the classes of the episode, and the accuracy."""
        present = one_hot(sy, self.spec.output_size, qx.dtype).sum(0) > 0
        scores = self.scores(shared, self.class_features(shared[0], sx, sy), qx)
        mask = present.to(scores.dtype)
        loss = ((scores - one_hot(qy, self.spec.output_size, scores.dtype)).square() * mask).sum() / (
            mask.sum() * scores.shape[0]
        )
        masked = torch.where(present, scores, torch.full_like(scores, -math.inf))
        return loss, (masked.argmax(-1) == qy).to(scores.dtype).mean()

    def predictor(
        self, shared: tuple[Params, Params], sx: torch.Tensor, sy: torch.Tensor
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """The class features are computed once; each call scores ``x`` against them."""
        present = one_hot(sy, self.spec.output_size, sx.dtype).sum(0) > 0
        classes = self.class_features(shared[0], sx, sy)

        def predict(x: torch.Tensor) -> torch.Tensor:
            scores = self.scores(shared, classes, x)
            return torch.where(present, scores, torch.full_like(scores, -math.inf))

        return predict
