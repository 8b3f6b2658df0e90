"""The normalisations a backbone can be built with: GroupNorm, BatchNorm, frozen BatchNorm."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from eigenarch.errors import EigenarchError

NORMS = ("gn", "bn", "frozen_bn")
NormLayer = Callable[[int], nn.Module]


def norm_layer(norm: str, gn_groups: int = 32) -> NormLayer:
    """A factory ``channels -> module`` for ``"gn"``, ``"bn"`` or ``"frozen_bn"``."""
    if norm == "gn":
        return lambda channels: nn.GroupNorm(gn_groups, channels)
    return {"bn": nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d}[norm]


def check_norm(norm: str | None, gn_groups: int, optional: bool = False) -> None:
    """Check that ``norm`` is one of :data:`NORMS` (or ``None`` where ``optional``: the
    builder's own) and ``gn_groups`` a positive integer."""
    if not (optional and norm is None) and norm not in NORMS:
        raise EigenarchError(f"norm {norm!r} is not one of {', '.join(NORMS)}")
    if isinstance(gn_groups, bool) or not isinstance(gn_groups, int) or gn_groups < 1:
        raise EigenarchError(f"gn_groups {gn_groups!r} is not a positive integer")


def check_gn_widths(names: Sequence[str], widths: Sequence[int], gn_groups: int) -> None:
    """Check that ``gn_groups`` GroupNorm groups divide every width."""
    for name, w in zip(names, widths, strict=True):
        if w % gn_groups:
            raise EigenarchError(
                f"width {name}={w} is not a multiple of the {gn_groups} GroupNorm groups; "
                "use widths that are, fewer groups (gn_groups) or norm 'bn'"
            )
