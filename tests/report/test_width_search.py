"""The search's inputs: dimensionalities with the map widths from spectra, none from dims."""

from __future__ import annotations

import json

import torch

from eigenarch.report.width_search import measured_dims
from eigenarch.spectrum.spectra import Spectra


def test_spectra_give_the_map_widths_a_dims_file_cannot(tmp_path):
    covariances = {"fpn.inner_blocks.0.0:in": torch.eye(8), "fpn.inner_blocks.1.0:in": torch.eye(4)}
    Spectra(covariances, dict.fromkeys(covariances, 10)).save(tmp_path / "s.safetensors")
    dims, measured, channels = measured_dims(tmp_path / "s.safetensors", None, None)
    assert channels == {"fpn.inner_blocks.0.0:in": 8, "fpn.inner_blocks.1.0:in": 4}
    assert dims == {"fpn.inner_blocks.0.0:in": 8, "fpn.inner_blocks.1.0:in": 4}
    assert measured["threshold"] == 1e-3
    (tmp_path / "d.json").write_text(json.dumps(dims))
    assert measured_dims(None, tmp_path / "d.json", None) == (
        dims,
        {"dims": str(tmp_path / "d.json")},
        None,
    )
