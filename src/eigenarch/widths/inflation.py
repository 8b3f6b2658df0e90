"""Searched widths that the greedy fill inflated (SPEC section 6, expand step 2).

The fill grows, one multiple at a time, whichever feasible width falls furthest short of its
ideal ``omega * O'``. Once the widths that carry the cost cannot grow within the budget, the
layers that cost next to nothing (an SE block's 1x1 convs on a pooled map, a hidden fc) keep
growing: on a model with SE blocks ``macs=base`` turned ``se.fc1`` 8 -> 464 while the conv it
gates shrank 64 -> 16. The rule stays literal; :func:`inflated_widths` names such widths so
that a search says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from eigenarch.widths.cost import round_width
from eigenarch.widths.ias import WidthSearchResult

#: A searched width more than this many times its ideal width is reported as inflated.
INFLATION = 2.0


@dataclass(frozen=True)
class Inflated:
    """A searched width past ``factor`` times its ideal width ``R(omega * O')``."""

    tie: str
    width: int
    ideal: int
    factor: float

    def __str__(self) -> str:
        return f"{self.tie} {self.width} (ideal {self.ideal})"


def inflated_widths(result: WidthSearchResult, factor: float = INFLATION) -> list[Inflated]:
    """The searched widths of ``result`` above ``factor`` times their ideal width
    ``R(omega * O')`` (the width the multiplier gives before the greedy fill), in tie order;
    ties kept at their base width are not searched and never listed."""
    return [
        Inflated(tie, width, ideal, factor)
        for tie, adjusted, width in zip(result.ties, result.adjusted, result.widths, strict=True)
        if tie not in result.fixed
        and width > factor * (ideal := round_width(result.omega * adjusted, result.multiple))
    ]


def inflation_note(inflated: list[Inflated]) -> str:
    """One line naming every inflated width (empty when there is none)."""
    if not inflated:
        return ""
    factor = inflated[0].factor
    return (
        f"warning: {len(inflated)} width(s) grew past {factor:g} x their ideal width "
        f"R(omega x adjusted) in the greedy fill, the budget going to layers that cost little: "
        f"{', '.join(map(str, inflated))}"
    )
