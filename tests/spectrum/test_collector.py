"""SpectrumCollector against a direct float64 numpy computation of SPEC section 3."""

from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

import eigenarch.spectrum.collector as collector_module
from eigenarch.errors import EigenarchError
from eigenarch.spectrum import SpectrumCollector


def test_toy_detector_matches_reference(
    toy_detector, toy_batches, collect_with_reference, assert_matches
):
    spectra, reference = collect_with_reference(toy_detector, toy_batches)
    assert_matches(spectra, reference)
    images = sum(len(b) for b in toy_batches)
    assert spectra.samples("head:in") == 2 * images  # a shared head: every call counts
    assert spectra.samples("box:in") == 3 * images  # RoI rows
    assert spectra.samples("mask:out") == 3 * images
    assert spectra.samples("stem:in") == images
    # The batches really are padded, so the valid-region rule is exercised.
    image_list, _ = toy_detector.transform(toy_batches[0])
    padded, sizes = image_list.tensors.shape[-2:], image_list.image_sizes
    assert any(tuple(s) != tuple(padded) for s in sizes)


def test_dead_map_gives_zeros_not_nan(toy_detector, toy_batches, collect_with_reference):
    spectra, _ = collect_with_reference(toy_detector, toy_batches)
    values = spectra.eigenvalues("dead:out")
    assert values.dtype == torch.float64 and not values.isnan().any() and not values.any()
    assert spectra.intrinsic_dim("dead:out") == 0
    assert spectra.degrees_of_freedom("dead:out") == 0.0
    assert spectra.effective_rank("dead:out") == 0.0


def test_mask_rcnn_matches_reference(collect_with_reference, assert_matches):
    torch.manual_seed(0)
    # ResNet-50: bottleneck 1x1 convs, whose :out maps are derived on padded batches.
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5)
    model = MaskRCNN(backbone, num_classes=3, min_size=64, max_size=96,
                     rpn_post_nms_top_n_test=50, box_detections_per_img=5,
                     box_score_thresh=0.0).eval()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    batches = [[torch.rand(3, 60, 90, generator=g), torch.rand(3, 80, 50, generator=g)]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fc6:in (12544 channels) is skipped with a warning
        derived = []
        spectra, reference = collect_with_reference(
            model, batches, after=lambda collector, i: derived.extend(collector.derived)
        )
    assert "backbone.body.layer1.0.conv3:out" in derived
    assert_matches(spectra, reference)
    assert spectra.samples("rpn.head.conv.0.0:in") == 5 * 2  # one call per FPN level
    assert spectra.samples("roi_heads.mask_predictor.conv5_mask:out") == spectra.samples(
        "roi_heads.mask_head.0.0:in"
    )


def test_shared_input_is_multiplied_once(monkeypatch):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(4, 6, 3, padding=1)
            self.downsample = nn.Conv2d(4, 6, 1)

        def forward(self, x):
            return self.conv1(x) + self.downsample(x)

    calls = []
    multiply = collector_module._multiply
    monkeypatch.setattr(collector_module, "_multiply",
                        lambda *a: calls.append(a[1].data_ptr()) or multiply(*a))  # fmt: skip
    model = Block()
    g = torch.Generator().manual_seed(0)
    with SpectrumCollector(model, sides=("in",)) as collector, torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 4, 5, 5, generator=g))
    assert len(calls) == 3  # one product per forward, the first one included
    spectra = collector.spectra()
    assert torch.equal(spectra.covariance("conv1:in"), spectra.covariance("downsample:in"))
    assert spectra.samples("conv1:in") == spectra.samples("downsample:in") == 6


def test_model_left_untouched(toy_detector, toy_batches):
    before = {name: set(vars(m)) for name, m in toy_detector.named_modules()}
    state = copy.deepcopy(toy_detector.state_dict())
    with torch.no_grad():
        expected = toy_detector(toy_batches[0])
        with SpectrumCollector(toy_detector):
            toy_detector(toy_batches[0])
        got = toy_detector(toy_batches[0])
    assert {name: set(vars(m)) for name, m in toy_detector.named_modules()} == before
    for module in toy_detector.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert all(torch.equal(state[k], v) for k, v in toy_detector.state_dict().items())
    assert torch.equal(expected[1], got[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_maps(dtype, collect_with_reference, assert_matches):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).to(dtype)  # fmt: skip
    batches = [torch.rand(4, 3, 8, 8).to(dtype) for _ in range(2)]
    spectra, reference = collect_with_reference(model, batches)
    assert_matches(spectra, reference)


def test_include_sides_and_width_limit():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Flatten(), nn.Linear(8 * 4, 20))
    with pytest.warns(UserWarning, match=r"2:in \(32\), 2:out \(20\)"):
        collector = SpectrumCollector(model, max_channels=16)
    assert collector.names == ["0:in", "0:out"]
    assert set(collector.skipped) == {"2:in", "2:out"}
    # Named exactly (module path or map name), a wide map is collected.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert SpectrumCollector(model, include=["2"], max_channels=16).names == ["2:in", "2:out"]
    assert SpectrumCollector(model, include=["*:out"], sides=["out"]).names == ["0:out", "2:out"]
    with pytest.raises(EigenarchError, match="sides"):
        SpectrumCollector(model, sides=("middle",))
    with pytest.raises(EigenarchError, match="no Conv2d"):
        SpectrumCollector(model, include=["backbone.*"])


def test_attention_out_proj_is_said_to_be_unhookable():
    # torch's MultiheadAttention (vit_b_16's self_attention) never calls its out_proj module.
    vit = torchvision.models.VisionTransformer(32, 16, num_layers=1, num_heads=2,
                                               hidden_dim=8, mlp_dim=16)  # fmt: skip
    out_proj = "encoder.layers.encoder_layer_0.self_attention.out_proj"
    with pytest.warns(UserWarning, match=rf"cannot hook 2 map\(s\): {out_proj}:in, {out_proj}:out"):
        collector = SpectrumCollector(vit)
    assert collector.unhooked == [f"{out_proj}:in", f"{out_proj}:out"]
    assert not [n for n in collector.names if "out_proj" in n]
    with collector, torch.no_grad():
        vit(torch.randn(2, 3, 32, 32))
    assert collector.spectra().names == collector.names  # every map left saw samples
    with pytest.raises(EigenarchError, match=r"no Conv2d.*; cannot hook 1 map\(s\)"):
        SpectrumCollector(vit, include=[f"{out_proj}:out"])


def test_default_limit_skips_fc6_sized_maps():
    model = nn.Linear(12544, 4)
    with pytest.warns(UserWarning, match="max_channels=4096"):
        assert SpectrumCollector(model).names == [":out"]


def test_spectra_can_be_read_while_collecting():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    x = torch.rand(2, 3, 6, 6)
    with SpectrumCollector(model) as collector, torch.no_grad():
        model(x)
        first = collector.spectra()
        assert torch.equal(first.covariance("0:in"), collector.spectra().covariance("0:in"))
        model(x)
    assert collector.spectra().samples("0:in") == 4
    assert torch.allclose(collector.spectra().covariance("0:out"), first.covariance("0:out"))


class _Expand(nn.Module):
    """A 3x3 conv, then a bias-free 1x1 expansion whose ``:out`` map can be derived."""

    def __init__(self) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 32, 1, bias=False)

    def forward(self, x):
        return self.expand(torch.relu(self.reduce(x)))


@pytest.mark.parametrize(("size", "derived"), [(6, ["expand:out"]), (1, [])])  # 1x1: no gain
def test_derived_outputs_match_reference(size, derived, collect_with_reference, assert_matches):
    torch.manual_seed(0)
    model = _Expand().eval()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, size, size, generator=g) for n in (2, 3, 1)]
    seen = []
    spectra, reference = collect_with_reference(
        model, batches, after=lambda collector, i: seen.append(collector.derived)
    )
    assert seen == [derived] * 3
    assert_matches(spectra, reference)


@pytest.mark.parametrize(("images", "derived"), [(None, []), (9, []), (10, ["expand:out"])])
def test_derivation_pays_back_within_the_images_streamed(
    images, derived, collect_with_reference, assert_matches
):
    # expand (8 -> 32) at 2 x 2: W S W^T costs 2 * 32 * 8 * 40 = 20480 multiply-adds, a sample's
    # products 32 * 32 * 4 / 2 = 2048: it pays from 10 images (default payback: 8).
    torch.manual_seed(0)
    model = _Expand().eval()
    batches = [
        torch.randn(3, 3, 2, 2, generator=torch.Generator().manual_seed(i)) for i in range(2)
    ]
    spectra, reference = collect_with_reference(model, batches, images=images)
    with SpectrumCollector(model, images=images) as collector, torch.no_grad():
        model(batches[0])
    assert collector.derived == derived
    assert_matches(spectra, reference)


def test_images_must_be_positive():
    with pytest.raises(EigenarchError, match="images 0: expected >= 1"):
        SpectrumCollector(_Expand(), images=0)


def test_an_earlier_hook_keeps_products(collect_with_reference, assert_matches):
    # A hook that runs before the collector's may change the output on any call: here from
    # the second on, after a first call that passes every check.
    torch.manual_seed(0)
    model = _Expand().eval()
    calls = []
    model.expand.register_forward_hook(
        lambda m, args, output: output * 2 if calls.append(1) or len(calls) > 1 else output
    )
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 3, 6, 6, generator=g) for _ in range(2)]
    seen = []
    spectra, reference = collect_with_reference(
        model, batches, after=lambda collector, i: seen.append(collector.derived)
    )
    assert seen == [[], []]
    assert_matches(spectra, reference)


def _change_module(expand: nn.Conv2d, change: str) -> None:
    weight = expand.weight
    if change == "weight":  # an optimizer step, a loaded state dict
        weight.mul_(-2.0)
    elif change == "weight.data":  # an EMA update: no version bump
        weight.data.mul_(-2.0)
    elif change == "prepended hook":
        expand.register_forward_hook(lambda m, args, output: output * 2, prepend=True)
    elif change == "bias":
        expand.bias = nn.Parameter(torch.full((32,), 0.5))
    else:
        expand.forward = lambda x: nn.Conv2d.forward(expand, x) - 1


@pytest.mark.parametrize("after_batch", [0, 2])  # between forwards; after the last one
@pytest.mark.parametrize("change", ["weight", "weight.data", "prepended hook", "bias", "forward"])
def test_module_change_ends_derivation(change, after_batch, collect_with_reference, assert_matches):
    torch.manual_seed(0)
    model = _Expand().eval()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 3, 6, 6, generator=g) for _ in range(3)]
    seen = []

    def after(collector, i):
        seen.append(collector.derived)
        if i == after_batch:
            _change_module(model.expand, change)

    spectra, reference = collect_with_reference(model, batches, after=after)
    assert seen == [["expand:out"]] * (after_batch + 1) + [[]] * (2 - after_batch)
    assert_matches(spectra, reference)


@pytest.mark.parametrize(("mean", "derived"), [(2.0, ["0:out"]), (30.0, [])])
def test_derived_map_precision_where_the_weight_cancels_the_mean(
    mean, derived, collect_with_reference, assert_matches
):
    # Non-centred inputs and weight rows summing to 0: W S_in W^T is small next to S_in, so
    # float32 error in S_in would dominate it (hence float64 products of the :in map), and
    # at a large mean the conv's own float32 output rounds too much to derive its map.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(32, 128, 1, bias=False)).eval()
    with torch.no_grad():
        weight = model[0].weight.view(128, 32)
        weight -= weight.mean(1, keepdim=True)
    g = torch.Generator().manual_seed(1)
    scale = (10 ** (-torch.arange(32) / 8.0)).view(1, 32, 1, 1)
    batches = [mean + scale * torch.randn(4, 32, 12, 12, generator=g) for _ in range(4)]
    seen = []
    spectra, reference = collect_with_reference(
        model, batches, after=lambda collector, i: seen.append(collector.derived)
    )
    assert seen == [derived] * 4
    assert_matches(spectra, reference)
    for threshold in (1e-2, 1e-3, 1e-4):
        values = np.linalg.eigvalsh(reference["0:out"][0])[::-1]
        assert spectra.intrinsic_dim("0:out", threshold) == (values / values[0] > threshold).sum()


def test_inference_tensor_parameters():
    with torch.inference_mode():
        torch.manual_seed(0)
        model = _Expand().eval()  # parameters are inference tensors: no version counter
        batches = [torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))] * 2
    results = []
    for derive in (True, False):
        with SpectrumCollector(model, derive=derive) as collector, torch.inference_mode():
            for batch in batches:
                model(batch)
            assert collector.derived == (["expand:out"] if derive else [])
        results.append(collector.spectra())
    for name in results[1].names:
        expected = results[1].covariance(name)
        assert (results[0].covariance(name) - expected).norm() <= 1e-6 * expected.norm(), name


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 40, 3)  # wide enough for the symmetric panels when patched
        self.fc = nn.Linear(40, 7)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@settings(max_examples=8, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_streaming_is_independent_of_batching(sizes):
    torch.manual_seed(0)
    model = _Classifier().eval()
    images = torch.rand(12, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    cuts = np.cumsum([0, *sizes])
    cuts = [c for c in cuts if c < len(images)] + [len(images)]
    results = []
    for bounds in (list(zip(cuts[:-1], cuts[1:], strict=True)), [(0, len(images))]):
        with SpectrumCollector(model) as collector, torch.no_grad():
            for start, stop in bounds:
                model(images[start:stop])
        results.append(collector.spectra())
    for name in results[1].names:
        a, b = results[0].covariance(name), results[1].covariance(name)
        assert (a - b).norm() / b.norm() < 1e-6
        assert results[0].samples(name) == results[1].samples(name)


@pytest.mark.parametrize("threads", [1, 2, 3])  # one syrk, then panels side by side
def test_symmetric_products_match_full_ones(
    monkeypatch, threads, toy_detector, toy_batches, collect_with_reference, assert_matches
):
    monkeypatch.setattr(collector_module, "MIN_PANEL", 2)  # the toy's 3..12 channels split
    monkeypatch.setattr(collector_module, "FLUSH_EVERY", 1)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        spectra, reference = collect_with_reference(toy_detector, toy_batches)
    finally:
        torch.set_num_threads(previous)
    assert_matches(spectra, reference)
    cov = spectra.covariance("branch:out")
    assert torch.equal(cov, cov.T) and math.isfinite(cov.sum().item())


def test_inference_mode_no_grad_and_autograd_agree(toy_detector, toy_batches):
    results = []
    for context in (torch.inference_mode, torch.no_grad, torch.enable_grad):
        with SpectrumCollector(toy_detector) as collector, context():
            for batch in toy_batches:
                outputs = toy_detector(batch)
        results.append(collector.spectra())
    outputs[1].sum().backward()  # the hooks left the autograd graph intact
    assert toy_detector.box.weight.grad is not None
    for spectra in results[:2]:
        assert spectra.names == results[2].names
        for name in spectra.names:
            expected = results[2].covariance(name)
            assert (spectra.covariance(name) - expected).norm() <= 1e-6 * expected.norm(), name
            assert spectra.samples(name) == results[2].samples(name)


def test_products_ignore_reduced_matmul_precision():
    model = nn.Linear(256, 2)
    x = torch.randn(3000, 256, generator=torch.Generator().manual_seed(0))
    results = []
    previous = torch.get_float32_matmul_precision()
    for precision in ("highest", "medium"):  # "medium" may allow bf16 / TF32 float32 matmuls
        torch.set_float32_matmul_precision(precision)
        try:
            with SpectrumCollector(model, sides=("in",)) as collector, torch.no_grad():
                model(x)  # the map is the input itself: the same whatever the precision
            assert torch.get_float32_matmul_precision() == precision
        finally:
            torch.set_float32_matmul_precision(previous)
        results.append(collector.spectra().covariance(":in"))
    assert torch.equal(results[0], results[1])


def test_precision_is_set_once_for_the_collection_and_given_back(monkeypatch):
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    seen = []  # the precision a later hook of the user's sees, during every forward
    model[1].register_forward_hook(lambda *a: seen.append(torch.get_float32_matmul_precision()))
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        collector = SpectrumCollector(model)
        with collector, torch.no_grad():
            assert torch.get_float32_matmul_precision() == "highest"
            calls = []
            setter = torch.set_float32_matmul_precision
            monkeypatch.setattr(torch, "set_float32_matmul_precision",
                                lambda p: (calls.append(p), setter(p)))  # fmt: skip
            for _ in range(3):
                model(torch.randn(4, 8))
            monkeypatch.undo()
            assert calls == [] and seen == ["highest"] * 3  # no hook touched it
        assert torch.get_float32_matmul_precision() == "medium"
        with pytest.raises(RuntimeError), collector:  # given back on an error too
            raise RuntimeError("stop")
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(previous)


def test_the_torch_internals_the_collector_relies_on():
    """Fails if torch changes the private parts the collector reads (collector.py says which)."""
    from torch.nn.modules import module as module_hooks

    from eigenarch.spectrum.collector import _first_hook, tensor_version

    t = torch.zeros(3)
    v = tensor_version(t)
    t.add_(1)
    t[0] = 2
    assert tensor_version(t) == v + 2
    assert isinstance(module_hooks._global_forward_hooks, dict)
    conv = torch.nn.Conv2d(1, 1, 1)
    first = conv.register_forward_hook(lambda *a: None)
    second = conv.register_forward_hook(lambda *a: None)
    assert list(conv._forward_hooks) == [first.id, second.id]
    assert _first_hook(conv, first.id) and not _first_hook(conv, second.id)
    before = conv.register_forward_hook(lambda *a: None, prepend=True)
    assert not _first_hook(conv, first.id) and _first_hook(conv, before.id)
    glob = torch.nn.modules.module.register_module_forward_hook(lambda *a: None)
    try:
        assert not _first_hook(conv, before.id)
    finally:
        glob.remove()


@pytest.mark.parametrize("channels", [1, 15, 16, 31, 32, 100, 2048])
@pytest.mark.parametrize("panels", [1, 2, 3, 16])
def test_panels_split_the_triangle_into_equal_work(channels, panels):
    bounds = collector_module._panel_bounds(channels, panels)
    n = max(1, min(panels, channels // collector_module.MIN_PANEL))
    assert len(bounds) == n + 1 and bounds[0] == 0 and bounds[-1] == channels
    assert all(a < b for a, b in zip(bounds, bounds[1:], strict=False))
    work = [
        (channels - a) ** 2 - (channels - b) ** 2 for a, b in zip(bounds, bounds[1:], strict=False)
    ]
    assert max(work) - min(work) <= 2 * channels + 2  # equal but for rounding to whole rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["rows", "columns", "strided"])
@pytest.mark.parametrize(("channels", "threads"), [(1, 2), (17, 1), (40, 2), (33, 3), (64, 4)])
def test_panel_products_equal_the_float64_reference(monkeypatch, dtype, layout, channels, threads):
    monkeypatch.setattr(collector_module, "MIN_PANEL", 8)
    g = torch.Generator().manual_seed(channels)
    base = torch.randn(2 * channels, 3 * 29, generator=g)
    matrix = {"rows": base[:channels], "columns": base[:channels].T.contiguous().T,
              "strided": base[::2, ::3]}[layout]  # fmt: skip
    torch.set_num_threads(threads)  # the autouse fixture restores one thread
    triangle = collector_module._Triangle(channels, dtype, torch.device("cpu"), threads)
    assert len(triangle.diagonal) == max(1, min(threads, channels // 8))
    triangle.add_grams([(matrix, 0.25), (matrix[:, :5], 1.0)])
    total = torch.zeros(channels, channels, dtype=torch.float64)
    triangle.add_to(total)
    got = collector_module._symmetric(total).numpy()
    m = matrix.double().numpy()
    expected = 0.25 * m @ m.T + m[:, :5] @ m[:, :5].T
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 1e-6
