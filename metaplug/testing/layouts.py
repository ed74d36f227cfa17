"""The standard models' weight names and shapes, as ``docs/models.md`` specifies them."""

from __future__ import annotations


def mlp_layout(inputs: int, outputs: int, hidden: tuple[int, ...] = (40, 40)) -> dict[str, tuple[int, ...]]:
    """``mlp``: ``features.{i}.weight`` ``(out, in)`` and ``.bias`` per hidden layer, then ``head.*``."""
    layout: dict[str, tuple[int, ...]] = {}
    for i, (fan_in, fan_out) in enumerate(zip((inputs, *hidden), hidden, strict=False)):
        layout[f"features.{i}.weight"], layout[f"features.{i}.bias"] = (fan_out, fan_in), (fan_out,)
    layout["head.weight"], layout["head.bias"] = (outputs, hidden[-1]), (outputs,)
    return layout


def conv4_layout(channels: int, size: int, outputs: int, filters: int = 64) -> dict[str, tuple[int, ...]]:
    """``conv4`` with max-pooling on ``size`` x ``size`` inputs of ``channels`` channels."""
    layout: dict[str, tuple[int, ...]] = {}
    for i in range(4):
        layout[f"features.{i}.conv.weight"] = (filters, channels if i == 0 else filters, 3, 3)
        for name in ("conv.bias", "norm.weight", "norm.bias"):
            layout[f"features.{i}.{name}"] = (filters,)
        size //= 2
    layout["head.weight"], layout["head.bias"] = (outputs, filters * size * size), (outputs,)
    return layout


def resnet12_layout(channels: int, outputs: int, widths: tuple[int, int, int, int]) -> dict[str, tuple[int, ...]]:
    """``resnet12`` with block widths ``widths`` on inputs of ``channels`` channels."""
    layout: dict[str, tuple[int, ...]] = {}
    for i, width in enumerate(widths):
        block = f"features.{i}"
        for j, fan_in in enumerate((channels, width, width), start=1):
            layout[f"{block}.conv{j}.weight"] = (width, fan_in, 3, 3)
            layout[f"{block}.norm{j}.weight"], layout[f"{block}.norm{j}.bias"] = (width,), (width,)
        layout[f"{block}.shortcut.conv.weight"] = (width, channels, 1, 1)
        layout[f"{block}.shortcut.norm.weight"], layout[f"{block}.shortcut.norm.bias"] = (width,), (width,)
        channels = width
    layout["head.weight"], layout["head.bias"] = (outputs, channels), (outputs,)
    return layout


def model_weights(state: dict) -> dict[str, tuple[int, ...]]:
    """Names (without ``model.``) and shapes of the model weights in an algorithm's state."""
    return {k[len("model.") :]: tuple(v.shape) for k, v in state.items() if k.startswith("model.")}
