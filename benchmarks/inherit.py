"""Resizing with inherited weights (SPEC section 6c, issue 23): cost and output change.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inherit.py``. For ResNet-50 (random
weights, BatchNorm and GroupNorm 32; spectra of its own maps over 16 random 96 px images):
the seconds :func:`inherit_resize` takes at x0.5 and x1.5 of every group (the trace given),
and the relative change of the outputs where every group grows x1.5 (BatchNorm: the function
is kept; GroupNorm: its groups' statistics change); at x0.5 also with the ridge eps at 1e-4
and 1e-2 instead of SPEC's 1e-6, and with the kept channels but no reconstruction.
"""

from __future__ import annotations

import time

import torch

from eigenarch.models.builders import classifier_by_name
from eigenarch.spectrum.collector import SpectrumCollector
from eigenarch.widths import trace_model
from eigenarch.widths.inherit import inherit_resize


def scaled(graph, factor: float) -> dict[str, int]:
    """Every group at ``factor`` times its width, rounded to a multiple of 32."""
    return {g.name: max(32, round(g.width * factor / 32) * 32) for g in graph.groups}


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 3, 96, 96)
    for norm in ("bn", "gn"):
        model = classifier_by_name("resnet50", norm).eval()
        with SpectrumCollector(model) as collector, torch.no_grad():
            model(x)
        spectra = collector.spectra()
        graph = trace_model(model, x[:1])
        with torch.no_grad():
            ref = model(x)

        def error(new, ref=ref) -> str:
            with torch.no_grad():
                return f"{float((new(x) - ref).norm() / ref.norm()):.3g}"

        for factor in (0.5, 1.5):
            start = time.perf_counter()
            new = inherit_resize(model, scaled(graph, factor), spectra, x[:1], graph=graph)
            seconds = time.perf_counter() - start
            print(f"resnet50 {norm} x{factor}: {seconds:.2f} s, relative output change "
                  f"{error(new)}")  # fmt: skip
        half = scaled(graph, 0.5)
        for eps in (1e-4, 1e-2):
            new = inherit_resize(model, half, spectra, x[:1], graph=graph, eps=eps)
            print(f"resnet50 {norm} x0.5 eps {eps:g}: relative output change {error(new)}")
        new = inherit_resize(model, half, spectra, x[:1], graph=graph, reconstruct=False)
        print(f"resnet50 {norm} x0.5 kept channels, no reconstruction: {error(new)}")


if __name__ == "__main__":
    main()
