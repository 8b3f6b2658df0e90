"""``collect_spectra`` as a library call: seeded, and the caller's random state untouched."""

from __future__ import annotations

import torch

from eigenarch.spectrum.stream import collect_spectra


def test_collect_spectra_leaves_the_callers_random_state(shapes_root, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = collect_spectra("resnet18", shapes_root, tmp_path / "a.safetensors", images=1,
                            batch_size=1, workers=0, device="cpu", seed=5)  # fmt: skip
    assert torch.equal(torch.rand(3), expected)  # as if the call had not happened
    again = collect_spectra("resnet18", shapes_root, tmp_path / "b.safetensors", images=1,
                            batch_size=1, workers=0, device="cpu", seed=5)  # fmt: skip
    name = first.names[0]
    assert torch.equal(first.covariance(name), again.covariance(name))  # same seed, same model
