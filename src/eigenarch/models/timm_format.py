"""A resized timm model written back through timm's own per-layer shape format.

timm builds its ``*_pruned`` models with ``timm.models._prune.adapt_model_from_string(model,
string)``: ``string`` lists every state-dict tensor's shape (``name:[d0, d1, ...]`` joined by
``***``, as in ``timm/models/_pruned/*.txt``) and timm rebuilds each ``Conv2d``,
``Conv2dSame``, ``BatchNorm2d``, ``BatchNormAct2d`` and ``Linear`` at the shape listed.
Where that rebuilds eigenarch's resized network exactly, the resized timm model *is* timm's
(:func:`timm_resized`); where it cannot, the network stays as eigenarch resizes it module by
module, for one of these reasons (the one place they are stated):

- a grouped conv with more than one channel per group (RegNet, ResNeXt): timm's function
  makes every conv with ``groups > 1`` depthwise;
- a resized tensor of another layer type (ConvNeXt's ``LayerNorm2d`` and layer scale
  ``gamma``, GroupNorm): timm's function resizes only the five layer types above;
- a depthwise conv with several outputs per channel: timm's function gives every
  depthwise conv as many outputs as inputs;
- a resized ``Linear`` output: timm's function keeps every ``Linear``'s outputs (it resizes
  the classifier's input only).

Families with only depthwise / plain convs, BatchNorm and a linear classifier (EfficientNet,
MobileNetV3, ResNet / ResNet-D, MobileNetV2, ...) go through timm's format.
"""

from __future__ import annotations

import torch
from torch import nn

from eigenarch.errors import EigenarchError
from eigenarch.models.export import shape_table

#: What ``adapt_model_from_string`` names the layer types it rebuilds.
REBUILT = "Conv2d, Conv2dSame, BatchNorm2d, BatchNormAct2d and Linear"


def model_string(model: nn.Module) -> str:
    """timm's model string of ``model``: every state-dict tensor ``name:[d0, d1, ...]``,
    joined by ``***`` (what ``adapt_model_from_string`` reads)."""
    return "***".join(f"{k}:{list(v.shape)}" for k, v in model.state_dict().items())


def _rebuilt_types() -> tuple[type[nn.Module], ...]:
    from timm.layers import BatchNormAct2d, Conv2dSame, Linear

    return nn.Conv2d, Conv2dSame, nn.BatchNorm2d, BatchNormAct2d, nn.Linear, Linear


def why_not(base: nn.Module, resized: nn.Module) -> str | None:
    """Why timm's format cannot express ``resized`` (``base`` resized by channel groups), by
    the first layer it cannot rebuild; ``None`` where it may (:func:`timm_resized` checks)."""
    base_modules, rebuilt = dict(base.named_modules()), _rebuilt_types()
    base_tensors = {**dict(base.named_parameters()), **dict(base.named_buffers())}
    for name, m in resized.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.in_channels != m.groups:
            return (f"{name} is a grouped conv ({m.groups} groups of {m.in_channels // m.groups} "
                    "channels): timm's format makes every grouped conv depthwise")  # fmt: skip
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.out_channels != m.groups:
            return (
                f"{name} is a depthwise conv of {m.out_channels // m.groups} outputs per "
                "channel: timm's format makes every depthwise conv one output per channel"
            )
        own = [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
        prefix = f"{name}." if name else ""
        changed = [k for k, t in own if t.shape != base_tensors[prefix + k].shape]
        if changed and type(m) not in rebuilt:
            return (f"{name} ({type(m).__name__}) has resized tensors ({', '.join(changed)}): "
                    f"timm's format rebuilds only {REBUILT} layers")  # fmt: skip
        if isinstance(m, nn.Linear) and m.out_features != base_modules[name].out_features:
            return (f"{name} is a Linear of {m.out_features} outputs, not "
                    f"{base_modules[name].out_features}: timm's format keeps every Linear's "
                    "outputs (it resizes the classifier's input only)")  # fmt: skip
    return None


def timm_resized(base: nn.Module, resized: nn.Module) -> tuple[nn.Module | None, str]:
    """``(timm's model, its string)``: ``adapt_model_from_string(base, model_string(resized))``
    with ``resized``'s state dict loaded (``strict=True``), in ``resized``'s train / eval mode,
    where that is ``resized``'s network exactly (same module names, types, attributes and
    tensor shapes; timm's ``Linear`` for ``nn.Linear``); else ``(None, why not)``. ``base``
    is the timm model at its own widths; the random state is left as it was."""
    from timm.layers import Linear
    from timm.models._prune import adapt_model_from_string

    reason = why_not(base, resized)
    if reason is not None:
        return None, reason
    string = model_string(resized)
    with torch.random.fork_rng(devices=[]):  # timm's new layers draw fresh weights
        timm_model = adapt_model_from_string(base, string)
    ours = dict(resized.named_modules())
    for name, m in timm_model.named_modules():
        mine = type(ours[name]) if name in ours else None
        if type(m) is not mine and not (type(m) is Linear and mine is nn.Linear):
            found = mine.__name__ if mine else "no module"
            return None, (f"timm's format builds {name} as {type(m).__name__}, the resized "
                          f"network has {found}")  # fmt: skip
    try:
        modules, tensors = shape_table(timm_model, resized)
    except EigenarchError as exc:
        return None, f"timm's format builds another network: {exc}"
    modules.pop("", None)  # the model's num_features: timm's are the resized ones
    if modules or tensors:
        name, what = next(iter({**modules, **tensors}.items()))
        return None, f"timm's format builds {name} otherwise (the resized network's: {what})"
    timm_model.load_state_dict(resized.state_dict(), strict=True)
    base.train(resized.training)  # adapt_model_from_string puts both in eval mode
    return timm_model.train(resized.training), string
