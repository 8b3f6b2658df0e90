"""A direct float64 numpy computation of SPEC section 3, and small models to check against."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from eigenarch.spectrum import Spectra, SpectrumCollector

HOOKED = (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)


class Recorder:
    """Stores every hooked module's input and output (as float64 numpy) on every call, with
    the image batch (padded size, image sizes) of the detector forward it came from; maps wider
    than 4096 channels are left out, as the collector does by default."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[tuple[str, str, np.ndarray, object]] = []
        self.padding = None
        self.handles = []
        for path, module in model.named_modules():
            if isinstance(module, GeneralizedRCNNTransform):
                self.handles.append(module.register_forward_hook(self._transform))
            if isinstance(module, HOOKED):
                self.handles.append(module.register_forward_hook(self._layer(path, module)))

    def _transform(self, module, args, output):
        images = output[0]
        self.padding = (tuple(images.tensors.shape[-2:]), [tuple(s) for s in images.image_sizes])

    def _layer(self, path, module):
        def hook(mod, args, output):
            kind = "rows" if isinstance(module, nn.Linear) else "spatial"
            for side, tensor in (("in", args[0]), ("out", output)):
                width = tensor.shape[-1] if kind == "rows" else tensor.shape[1]
                if width > 4096:  # the collector's default limit (fc6:in of a box head)
                    continue
                array = tensor.detach().to(torch.float64).numpy().copy()
                self.calls.append((f"{path}:{side}", kind, array, self.padding))

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def reference_covariances(calls) -> dict[str, tuple[np.ndarray, int]]:
    """SPEC section 3, position by position in float64: name -> (Sigma, n)."""
    sums: dict[str, list] = {}
    for name, kind, array, padding in calls:
        if kind == "rows":
            rows = array.reshape(-1, array.shape[-1])
            pieces = [(rows.T, 1)] if len(rows) else []
            count = len(rows)
        else:
            batch, channels, height, width = array.shape
            images = padding is not None and batch == len(padding[1]) and "roi_heads." not in name
            pieces = []
            for i in range(batch):
                h, w = height, width
                if images:
                    (ph, pw), sizes = padding
                    h = math.ceil(sizes[i][0] * height / ph)
                    w = math.ceil(sizes[i][1] * width / pw)
                pieces.append((array[i, :, :h, :w].reshape(channels, -1), h * w))
            count = batch
        total, n = sums.setdefault(name, [0.0, 0])
        for matrix, area in pieces:  # einsum without BLAS: no thread pool on a busy machine
            total = total + np.einsum("ck,dk->cd", matrix, matrix) / area
        sums[name] = [total, n + count]
    return {name: (total / n, n) for name, (total, n) in sums.items() if n}


def intrinsic_dim(cov: np.ndarray, threshold: float = 1e-3) -> int:
    """SPEC section 3 on a reference covariance (float64 LAPACK through torch, one thread)."""
    values = torch.linalg.eigvalsh(torch.from_numpy(cov)).numpy()[::-1].clip(0, None)
    return 0 if values[0] <= 0 else int((values / values[0] > threshold).sum())


def _collect_with_reference(model, batches, after=None, **kwargs) -> tuple[Spectra, dict]:
    with SpectrumCollector(model, **kwargs) as collector, torch.no_grad():
        recorder = Recorder(model)  # its hooks after the collector's: both see the same maps
        for i, batch in enumerate(batches):
            model(batch)
            if after is not None:
                after(collector, i)
    recorder.close()
    return collector.spectra(), reference_covariances(recorder.calls)


def _assert_matches(spectra: Spectra, reference: dict) -> None:
    assert sorted(spectra.names) == sorted(reference)
    for name, (cov, n) in reference.items():
        got = spectra.covariance(name).numpy()
        assert got.dtype == np.float64 and got.shape == cov.shape
        assert spectra.samples(name) == n, name
        scale = np.linalg.norm(cov)
        if scale == 0:
            assert not got.any(), name
        else:
            assert np.linalg.norm(got - cov) / scale < 1e-6, name
        assert spectra.intrinsic_dim(name) == intrinsic_dim(cov), name


@pytest.fixture
def collect_with_reference():
    """``(model, batches, after=None, **collector_args) -> (spectra, {name: (reference Sigma,
    n)})``; ``after(collector, i)`` runs after batch ``i``."""
    return _collect_with_reference


@pytest.fixture
def assert_matches():
    """Same maps, same sample counts, covariances within 1e-6 (relative, Frobenius) of the
    reference, identical intrinsic dimensionalities at 1e-3."""
    return _assert_matches


class ToyDetector(nn.Module):
    """Padded batches, a block input feeding two convs, two heads each shared by two levels (the
    second reading the levels after the first), RoI-style maps (rows of pooled crops into a
    Linear and a ConvTranspose2d) and a dead map."""

    def __init__(self) -> None:
        super().__init__()
        self.transform = GeneralizedRCNNTransform(48, 80, [0.5] * 3, [0.25] * 3,
                                                  size_divisible=16)  # fmt: skip
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.branch = nn.Conv2d(8, 12, 3, padding=1)
        self.shortcut = nn.Conv2d(8, 12, 1)
        self.down = nn.Conv2d(12, 12, 3, stride=2, padding=1)
        self.head = nn.Conv2d(12, 6, 3, padding=1)
        self.head2 = nn.Conv2d(12, 3, 1)  # reads the same levels, after the first head
        self.dead = nn.Conv2d(12, 5, 1)
        nn.init.zeros_(self.dead.weight)
        nn.init.zeros_(self.dead.bias)
        self.box = nn.Linear(12 * 3 * 3, 16)
        self.mask = nn.ConvTranspose2d(12, 4, 2, stride=2)

    def forward(self, images: list[torch.Tensor]):
        image_list, _ = self.transform(images)
        x = torch.relu(self.stem(image_list.tensors))
        y = torch.relu(self.branch(x) + self.shortcut(x))
        z = self.down(y)
        levels = [torch.relu(y), torch.relu(z)]  # read by the heads only
        heads = [self.head(level) for level in levels] + [self.head2(level) for level in levels]
        self.dead(z)
        boxes = [torch.tensor([[0.0, 0, 8, 8], [4, 4, 20, 16], [2, 6, 10, 30]])] * len(images)
        crops = torchvision.ops.roi_align(y, boxes, output_size=3, spatial_scale=0.5)
        return heads, self.box(crops.flatten(1)), self.mask(crops)


@pytest.fixture
def toy_batches() -> list[list[torch.Tensor]]:
    """Three batches of images of different sizes (so every batch is padded)."""
    g = torch.Generator().manual_seed(0)
    sizes = [[(40, 64), (56, 40)], [(48, 48), (30, 60), (64, 36)], [(50, 70)]]
    return [[torch.rand(3, h, w, generator=g) for h, w in batch] for batch in sizes]


@pytest.fixture
def toy_detector() -> ToyDetector:
    torch.manual_seed(0)
    return ToyDetector().eval()


@pytest.fixture(autouse=True)
def one_thread(one_thread):
    """Every test here runs with one intra-op thread (tests/conftest.py's ``one_thread``)."""
