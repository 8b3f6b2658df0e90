"""Backbone initialisation from pre-trained weights, loaded without executing foreign code.

Accepted files:

- a backbone state dict in torchvision naming (``conv1.weight``, ``layer1.0.bn1.weight``,
  ...; prefixes ``module.`` and ``backbone.body.`` are stripped, ``fc.*`` ignored);
- a checkpoint written by ``eigenarch pretrain`` or ``eigenarch train``, or by timm's
  ``train.py`` (its ``state_dict``: the trained model, not ``state_dict_ema``);
- a state dict in a ``.safetensors`` file (a timm model's as ``model.state_dict()`` holds it);
- a Detectron-style pickle (``R-50-GN.pkl``: blobs such as ``res2_0_branch2a_w``,
  ``res2_0_branch2a_gn_s``), read by an unpickler that only rebuilds numpy arrays.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import nn

from eigenarch.errors import EigenarchError
from eigenarch.io import load_torch
from eigenarch.progress import console

#: Detectron (Caffe2, BGR, 0..255 inputs) pixel mean, in RGB order and scaled to 0..1.
DETECTRON_MEAN = (122.7717 / 255, 115.9465 / 255, 102.9801 / 255)
DETECTRON_STD = (1 / 255, 1 / 255, 1 / 255)

#: ``format`` of a detector checkpoint (:mod:`eigenarch.train.checkpoint`'s ``DETECTOR_FORMAT``).
DETECTOR = "eigenarch.detector"
#: ``info["format"]`` of a whole detector read from a checkpoint of ``eigenarch resize``.
INHERITED = "eigenarch.inherited"

_PREFIXES = ("module.", "backbone.body.", "body.")
#: Where a checkpoint holds its model's state dict: ours and torchvision's reference
#: scripts' ``model``, timm's ``train.py``'s ``state_dict``.
CHECKPOINT_KEYS = ("model", "state_dict")
_DETECTRON_BLOB = re.compile(r"^res(\d)_(\d+)_branch(1|2[abc])_(w|b|gn_s|gn_b|bn_s|bn_b)$")
_DETECTRON_STEM = {
    "conv1_w": "conv1.weight",
    "conv1_gn_s": "bn1.weight",
    "conv1_gn_b": "bn1.bias",
    "res_conv1_bn_s": "bn1.weight",
    "res_conv1_bn_b": "bn1.bias",
    "fc1000_w": "fc.weight",
    "fc1000_b": "fc.bias",
}


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays, dtypes and plain containers; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("_codecs", "encode"),  # how protocol-2 pickles store bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def detectron_to_torchvision(blobs: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], list]:
    """Rename Detectron ResNet blobs to torchvision names; returns (state dict, unmatched).

    The stem conv is flipped from BGR to RGB input; momentum and other non-weight blobs are
    returned as unmatched.
    """
    state, unmatched = {}, []
    conv = {"2a": "conv1", "2b": "conv2", "2c": "conv3"}
    norm = {"2a": "bn1", "2b": "bn2", "2c": "bn3"}
    for name, value in blobs.items():
        target = _DETECTRON_STEM.get(name)
        match = _DETECTRON_BLOB.match(name)
        if match:
            stage, block, branch, kind = match.groups()
            prefix = f"layer{int(stage) - 1}.{block}."
            if branch == "1":
                module = "downsample.0" if kind in ("w", "b") else "downsample.1"
            else:
                module = conv[branch] if kind in ("w", "b") else norm[branch]
            field = "weight" if kind in ("w", "gn_s", "bn_s") else "bias"
            target = prefix + module + "." + field
        if target is None or not isinstance(value, np.ndarray):
            unmatched.append(name)
            continue
        tensor = torch.from_numpy(np.ascontiguousarray(value)).float()
        if name == "conv1_w":
            tensor = tensor.flip(1)  # BGR -> RGB input channels
        state[target] = tensor
    return state, unmatched


def _read_detectron_pickle(path: Path) -> dict[str, np.ndarray]:
    try:
        with path.open("rb") as handle:
            data = _ArrayUnpickler(io.BufferedReader(handle), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise EigenarchError(f"{path}: not a Detectron weights pickle ({exc})") from None
    blobs = data.get("blobs", data) if isinstance(data, dict) else None
    if not isinstance(blobs, dict):
        raise EigenarchError(f"{path}: expected a dict of blobs in the Detectron pickle")
    return blobs


def _backbone_only(state: dict[str, Any]) -> dict[str, Any]:
    """Strip wrapper prefixes and drop the classifier head (``fc.*``)."""
    out = {}
    for key, value in state.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        if not key.startswith("fc."):
            out[key] = value
    return out


def read_weights_file(path: str | os.PathLike[str], what: str) -> Any:
    """What a weights file holds: a ``.safetensors`` file's state dict, else the
    ``torch.save`` payload (:func:`~eigenarch.io.load_torch`); one-line errors name ``path``."""
    if Path(path).suffix != ".safetensors":
        return load_torch(path, what)  # one line, never torch's advice
    try:
        return safetensors.torch.load_file(str(path))
    except (safetensors.SafetensorError, OSError) as exc:
        raise EigenarchError(f"{path}: not a safetensors file ({exc})") from None


def read_backbone_weights(
    path: str | os.PathLike[str], option: str = "--init", whole_detector: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Backbone weights in torchvision naming from any accepted file.

    Returns ``(state dict, info)``; ``info`` has ``format`` and, for Detectron pickles, the
    unmatched blobs and the pixel mean / std the weights expect. With ``whole_detector``, a
    detector checkpoint that ``eigenarch resize`` wrote gives every weight of the detector,
    names as they are (``format`` :data:`INHERITED`). A ``.safetensors`` file is a state
    dict. Errors name ``option`` and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise EigenarchError(f"{option} {path}: file not found")
    if path.suffix == ".pkl":
        state, unmatched = detectron_to_torchvision(_read_detectron_pickle(path))
        state = _backbone_only(state)
        info = {
            "format": "detectron",
            "unmatched": unmatched,
            "image_mean": DETECTRON_MEAN,
            "image_std": DETECTRON_STD,
        }
        return state, info
    try:
        payload = read_weights_file(path, "torch weights file")
    except EigenarchError as exc:
        raise EigenarchError(f"{option} {exc}") from None
    inherited = False
    held = next((k for k in CHECKPOINT_KEYS if isinstance(payload, dict)
                 and isinstance(payload.get(k), dict)), None)  # fmt: skip
    if held is not None:
        kind = str(payload.get("format", "checkpoint"))
        inherited = kind == DETECTOR and isinstance(payload.get("inherited"), dict)
        payload = payload[held]
        if kind == DETECTOR and not (inherited and whole_detector):
            payload = {k: v for k, v in payload.items() if k.startswith("backbone.body.")}
    else:
        kind = "state_dict"
    if not isinstance(payload, dict) or not all(torch.is_tensor(v) for v in payload.values()):
        raise EigenarchError(f"{option} {path}: expected a state dict of tensors")
    if inherited and whole_detector:
        return payload, {"format": INHERITED, "unmatched": []}
    return _backbone_only(payload), {"format": kind, "unmatched": []}


def load_init_weights(
    detector: nn.Module, path: str | os.PathLike[str], complete: bool = False
) -> dict[str, Any]:
    """``train --init``: the whole ``detector`` from a checkpoint ``eigenarch resize`` wrote
    (every weight, names and shapes as the run's detector has them), else its backbone body
    from any file :func:`load_backbone_weights` takes (``complete``: see there). Returns the
    ``info`` of the load."""
    state, info = read_backbone_weights(path, whole_detector=True)
    if info["format"] != INHERITED:
        return _load_into_body(detector.backbone.body, state, info, path, complete=complete)
    own = detector.state_dict()
    for key in dict.fromkeys([*own, *state]):
        if key not in own or key not in state or own[key].shape != state[key].shape:
            found = tuple(state[key].shape) if key in state else "missing"
            wanted = tuple(own[key].shape) if key in own else "none"
            raise EigenarchError(
                f"--init {path}: the resized detector does not fit this run's detector: {key} "
                f"is {found} in the file, {wanted} in the model (train with --backbone the "
                "width spec it was resized to and its source run's detector options)"
            )
    detector.load_state_dict(state)
    return {**info, "missing": [], "unexpected": [], "loaded": len(state)}


def load_backbone_weights(
    body: nn.Module, path: str | os.PathLike[str], option: str = "--init", complete: bool = False
) -> dict[str, Any]:
    """Copy pre-trained weights into a backbone ``body`` (by name); report what did not match.

    Shape mismatches are an error naming the first few parameters in the body's order, and
    so are BatchNorm weights (running statistics in the file) for GroupNorm layers. Keys of
    the file that the body lacks (``fc``, BatchNorm running stats for a GN body, ...) are
    reported, and so are parameters of the body the file lacks, unless ``complete`` (a timm
    model's own state dict: every tensor of the body must be in the file), where the first
    is an error. Returns the ``info`` of :func:`read_backbone_weights` with ``missing`` and
    ``unexpected`` key lists added.
    """
    state, info = read_backbone_weights(path, option)
    return _load_into_body(body, state, info, path, option, complete)


def _load_into_body(
    body: nn.Module,
    state: dict[str, torch.Tensor],
    info: dict[str, Any],
    path: object,
    option: str = "--init",
    complete: bool = False,
) -> dict[str, Any]:
    own = body.state_dict()
    modules = dict(body.named_modules())
    for key in state:
        module, _, stat = key.rpartition(".")
        if stat == "running_mean" and isinstance(modules.get(module), nn.GroupNorm):
            raise EigenarchError(
                f"{option} {path}: {key} is a BatchNorm statistic but the backbone's {module} is "
                "GroupNorm; BatchNorm weights are not GroupNorm weights: give GN weights (e.g. a "
                "GN pre-training or a Detectron R-50-GN.pkl) or train with --norm bn"
            )
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)} in the model"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise EigenarchError(
            f"{option} {path}: shapes do not match the backbone: "
            + "; ".join(wrong[:3])
            + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else "")
        )
    absent = [k for k in own if k not in state and not k.startswith("fc.")]
    if complete and absent and any(k in own for k in state):
        raise EigenarchError(
            f"{option} {path}: does not fit the backbone: its {absent[0]} is not in the file"
            + (f" (nor {len(absent) - 1} more)" if len(absent) > 1 else "")
            + "; expected the state dict of the same model"
        )
    matched = {k: v for k, v in state.items() if k in own}
    body.load_state_dict(matched, strict=False)
    info["missing"] = sorted(absent)
    info["unexpected"] = sorted([k for k in state if k not in own] + info["unmatched"])
    info["loaded"] = len(matched)
    if not matched:
        raise EigenarchError(f"{option} {path}: no parameter name matches the backbone")
    for what in ("missing", "unexpected"):
        if info[what]:
            shown = ", ".join(info[what][:5]) + (", ..." if len(info[what]) > 5 else "")
            console.print(
                f"{option} {path}: {len(info[what])} {what} key(s): {shown}", highlight=False
            )
    return info
