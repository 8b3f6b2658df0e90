"""What the collector's ``TorchFunctionMode`` (``spectrum/functional.py``) costs (issue 26).

Inside ``with SpectrumCollector(...)`` every torch function passes through
:class:`~eigenarch.spectrum.functional.WeightUses`. Measured, one torch thread:

* per call: ``torch.add`` on two 2-element tensors, plain and under the mode (as inside a
  forward: every argument checked), median of 7 x 20 000 calls;
* per forward: the model's forward (random weights, eval, ``torch.no_grad``) under a
  collector of one small map (so that products cost next to nothing) with the mode and with
  it switched off, forward by forward in turn, median and minimum of CPU time over
  ``--repeats``; and the number of torch function calls the mode sees per forward.

Usage: ``python benchmarks/functional.py [--repeats 7]``
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from eigenarch.spectrum import SpectrumCollector, functional

MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], object], str]] = {
    "resnet50 224px b2": (
        lambda: torchvision.models.resnet50(),
        lambda: torch.rand(2, 3, 224, 224),
        "conv1:in",
    ),
    "swin_t 224px b1": (
        lambda: torchvision.models.swin_t(),
        lambda: torch.rand(1, 3, 224, 224),
        "features.0.0:in",
    ),
    "maskrcnn_resnet50_fpn 320px": (
        lambda: torchvision.models.detection.maskrcnn_resnet50_fpn(
            weights=None, weights_backbone=None, min_size=320, max_size=320
        ),
        lambda: [torch.rand(3, 320, 320)],
        "backbone.body.conv1:in",
    ),
}


class _Counting(functional.WeightUses):
    calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        _Counting.calls += 1
        return super().__torch_function__(func, types, args, kwargs)


def per_call() -> tuple[float, float]:
    """Microseconds per ``torch.add`` call: plain, and under the mode inside a forward."""
    layer = nn.Linear(2, 2)
    uses = functional.WeightUses(layer, [(layer, lambda *a: None)])
    uses._running[id(layer)] = 1  # as inside the model's forward: every call is checked
    a, b = torch.zeros(2), torch.zeros(2)

    def loop(n: int = 20_000) -> float:
        start = time.perf_counter()
        for _ in range(n):
            torch.add(a, b)
        return (time.perf_counter() - start) / n * 1e6

    plain, mode = [], []
    for _ in range(7):
        plain.append(loop())
        with uses:
            mode.append(loop())
    return statistics.median(plain), statistics.median(mode)


def per_forward(name: str, repeats: int) -> dict[str, float]:
    build, data, include = MODELS[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build().eval()
    x = data()
    times: dict[bool, list[float]] = {True: [], False: []}
    original = functional.WeightUses.__enter__, functional.WeightUses.__exit__
    for _ in range(repeats):
        for on in (True, False):
            if not on:  # the mode switched off: the collector as it was before
                functional.WeightUses.__enter__ = lambda self: self
                functional.WeightUses.__exit__ = lambda self, *exc: None
            with SpectrumCollector(model, include=[include]), torch.no_grad():
                start = time.process_time()
                model(x)
                times[on].append(time.process_time() - start)
            functional.WeightUses.__enter__, functional.WeightUses.__exit__ = original
    _Counting.calls = 0
    with torch.no_grad(), _Counting(model, []):  # the torch calls the mode sees in a forward
        model(x)
    return {
        "on median": statistics.median(times[True]),
        "off median": statistics.median(times[False]),
        "on min": min(times[True]),
        "off min": min(times[False]),
        "calls": _Counting.calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    plain, mode = per_call()
    print(f"per torch call: plain {plain:.2f} us, under the mode {mode:.2f} us")
    for name in MODELS:
        r = per_forward(name, args.repeats)
        on, off = f"{r['on median']:.3f} (min {r['on min']:.3f})", f"{r['off median']:.3f}"
        print(f"{name}: CPU s per forward, mode on {on}, off {off} (min {r['off min']:.3f}); "
              f"{r['calls']} torch calls")  # fmt: skip


if __name__ == "__main__":
    main()
