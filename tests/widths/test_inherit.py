"""Resizing with inherited weights (SPEC section 6c): selection, reconstruction, the model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eigenarch.errors import EigenarchError
from eigenarch.spectrum.collector import SpectrumCollector
from eigenarch.spectrum.spectra import Spectra
from eigenarch.widths import trace_model
from eigenarch.widths.inherit import (
    group_covariance,
    inherit_resize,
    read_tensors,
    reconstruct_weight,
    reconstruction,
    select_channels,
)


class Block(nn.Module):
    """A basic residual block (projection shortcut where the width or stride changes)."""

    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.down = None
        if stride != 1 or inp != out:
            self.down = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False),
                                      nn.BatchNorm2d(out))  # fmt: skip

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


class Tiny(nn.Module):
    """Stem, two residual blocks, pooled linear classifier: four channel groups."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())  # fmt: skip
        self.layer1 = Block(width, width, 1)
        self.layer2 = Block(width, 2 * width, 2)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.fc(self.layer2(self.layer1(self.stem(x))).mean((2, 3)))


def images(n: int, gen: torch.Generator, templates: torch.Tensor) -> tuple:
    labels = torch.randint(0, len(templates), (n,), generator=gen)
    scale = 0.5 + torch.rand(n, 1, 1, 1, generator=gen)
    return templates[labels] * scale + 0.5 * torch.randn(n, 3, 16, 16, generator=gen), labels


def own_spectra(model: nn.Module, x: torch.Tensor, **options) -> Spectra:
    with SpectrumCollector(model.eval(), **options) as collector, torch.no_grad():
        model(x)
    return collector.spectra()


@pytest.fixture(scope="module")
def trained():
    """A Tiny net trained 150 steps to 100 % on 10 smooth templates, its spectra on 512
    training images, 256 held-out images and its graph."""
    gen = torch.Generator().manual_seed(0)
    templates = F.interpolate(torch.randn(10, 3, 4, 4, generator=gen), size=16, mode="bilinear")
    torch.manual_seed(0)
    model = Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(150):
        x, y = images(64, gen, templates)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    spectra = own_spectra(model, images(512, gen, templates)[0])
    held_out = images(256, gen, templates)[0]
    return model.eval(), spectra, held_out, trace_model(model, held_out[:1])


def relative_error(new: nn.Module, model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = model(x)
        return float((new.eval()(x) - ref).norm() / ref.norm())


# --- selection ---------------------------------------------------------------------------


def test_selection_keeps_the_largest_residual_after_the_schur_update_ties_to_lower_index():
    sigma = torch.tensor([[4.0, 3.9, 0.0], [3.9, 4.0, 0.0], [0.0, 0.0, 1.0]])
    # 0 and 1 tie at 4 (lower index wins); 1 is then explained (residual 0.1975 < 1)
    assert select_channels(sigma, 2).tolist() == [0, 2]
    assert select_channels(sigma, 1).tolist() == [0]
    assert select_channels(torch.diag(torch.tensor([1.0, 3.0, 5.0])), 2).tolist() == [1, 2]


def test_selection_after_the_rank_is_spent_takes_the_lowest_free_indices():
    f = torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = f @ f.T  # rank 2: after two picks, residuals of round-off (either sign) only
    first = int(sigma.diagonal().argmax())
    second = int((sigma.diagonal() - sigma[:, first] ** 2 / sigma[first, first]).argmax())
    rest = [i for i in range(8) if i not in (first, second)][:3]
    assert select_channels(sigma, 5).tolist() == sorted([first, second, *rest])


def test_grouped_selection_keeps_the_same_count_in_each_conv_group():
    sigma = torch.diag(torch.tensor([1.0, 2.0, 5.0, 4.0]))
    assert select_channels(sigma, 2).tolist() == [2, 3]
    assert select_channels(sigma, 2, groups=2).tolist() == [1, 2]
    with pytest.raises(EigenarchError, match="cannot keep 3 of 4 channels equally in 2 conv"):
        select_channels(sigma, 3, groups=2)


# --- reconstruction ----------------------------------------------------------------------


def test_reconstruction_is_the_ridge_least_squares_estimate_with_relative_eps():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(5, 40, generator=gen, dtype=torch.float64)
    sigma = f @ f.T / 40
    kept, dropped = torch.tensor([0, 2, 3]), torch.tensor([1, 4])
    skk = sigma[kept][:, kept]
    ridge = 1e-6 * skk.trace() / 3
    expected = sigma[dropped][:, kept] @ torch.linalg.inv(skk + ridge * torch.eye(3))
    a = reconstruction(sigma, kept)
    torch.testing.assert_close(a, expected, rtol=1e-13, atol=0)
    absolute = sigma[dropped][:, kept] @ torch.linalg.inv(skk + 3 * ridge * torch.eye(3))
    assert not torch.allclose(a, absolute, rtol=1e-10, atol=0)  # eps * tr, not / |K|
    two = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    assert reconstruction(two, torch.tensor([0])).item() == pytest.approx(0.5 / (1 + 1e-6), 1e-15)
    assert not reconstruction(torch.zeros(3, 3), torch.tensor([0])).any()  # dead kept channel


def test_reconstructed_weight_is_w_k_plus_w_d_a_at_every_kernel_tap():
    gen = torch.Generator().manual_seed(1)
    f = torch.randn(6, 30, generator=gen, dtype=torch.float64)
    sigma, kept = f @ f.T, torch.tensor([1, 3, 4])
    dropped = torch.tensor([0, 2, 5])
    weight = torch.randn(4, 6, 3, 3, generator=gen, dtype=torch.float64)
    a = reconstruction(sigma, kept)
    expected = weight[:, kept] + torch.einsum("odxy,dk->okxy", weight[:, dropped], a)
    torch.testing.assert_close(reconstruct_weight(weight, sigma, kept), expected)
    linear = weight[..., 0, 0]
    torch.testing.assert_close(reconstruct_weight(linear, sigma, kept), expected[..., 0, 0])


def _rank_limited_pair(consumer: nn.Module, x: torch.Tensor) -> tuple:
    torch.manual_seed(0)
    producer = nn.Conv2d(2, 8, 1) if x.dim() == 4 else nn.Linear(4, 16)
    model = nn.Sequential(producer, consumer).eval()
    with torch.no_grad():
        h = model[0](x)
    rows = h.transpose(1, -1).reshape(-1, h.shape[1]).double() if x.dim() == 4 else h.double()
    cov = rows.T @ rows / len(rows)
    return model, Spectra({"1:in": cov}, {"1:in": len(rows)})


@pytest.mark.parametrize("kind", ["linear", "conv3x3"])
def test_a_map_of_rank_at_most_the_new_width_is_reconstructed_to_float_tolerance(kind):
    if kind == "linear":  # affine in 4 inputs: non-centred rank 5 of 16
        x, consumer, width = torch.randn(256, 4), nn.Linear(16, 3), 5
    else:  # 1x1 conv of 2 channels + bias: rank 3 of 8, read by every tap of a 3x3 conv
        x, consumer, width = torch.randn(64, 2, 8, 8), nn.Conv2d(8, 4, 3, padding=1), 3
    model, spectra = _rank_limited_pair(consumer, x)
    graph = trace_model(model, x[:1])
    new = inherit_resize(model, {"0": width}, spectra, x[:1], graph=graph)
    assert new[0].weight.shape[0] == width
    assert relative_error(new, model, x) < 1e-5
    dropped_only = inherit_resize(model, {"0": width}, spectra, x[:1], graph, reconstruct=False)
    assert relative_error(dropped_only, model, x) > 0.1


def test_a_linear_layer_on_a_flattened_map_is_reconstructed_at_every_position():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 6, 1), nn.Flatten(), nn.Linear(6 * 16, 3)).eval()
    x = torch.randn(64, 2, 4, 4)
    spectra = own_spectra(model, x)  # "2:in" is 96 wide: the group's covariance is "0:out"
    new = inherit_resize(model, {"0": 3}, spectra, x[:1])
    assert new[2].in_features == 3 * 16
    assert relative_error(new, model, x) < 1e-5


# --- the group's covariance --------------------------------------------------------------


def test_group_covariance_sums_trace_normalised_maps_of_different_tensors(trained):
    model, spectra, x, graph = trained
    modules = dict(model.named_modules())
    stream = next(g for g in graph.groups if g.name == "stem.0")
    tensors = read_tensors(model, x[:1], list(stream.consumers))
    assert tensors["layer2.conv1"] == tensors["layer2.down.0"] != tensors["layer1.conv1"]
    a, b = spectra.covariance("layer1.conv1:in"), spectra.covariance("layer2.conv1:in")
    expected = a / a.trace() + b / b.trace()  # layer2.down.0 reads layer2.conv1's tensor
    torch.testing.assert_close(group_covariance(stream, spectra, modules, "", tensors), expected)
    outs = own_spectra(model, x, sides=("out",))
    p, q = outs.covariance("stem.0:out"), outs.covariance("layer1.conv2:out")
    torch.testing.assert_close(group_covariance(stream, outs, modules, "", tensors),
                               p / p.trace() + q / q.trace())  # fmt: skip
    other = own_spectra(model, x, include=["fc"])
    with pytest.raises(EigenarchError, match=r"group 'stem.0' has no covariance .* collect "
                       r"layer1.conv1:in .*--max-channels of at least 16"):  # fmt: skip
        inherit_resize(model, {"stem.0": 8}, other, x[:1], graph=graph)


# --- the whole model ---------------------------------------------------------------------


def test_same_widths_give_the_same_outputs_and_unchanged_groups_keep_their_weights(trained):
    model, spectra, x, graph = trained
    same = inherit_resize(model, graph.widths(), spectra, x[:1], graph=graph)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))
    one = inherit_resize(model, {"layer1.conv1": 8}, spectra, x[:1], graph=graph)
    old, new = model.state_dict(), one.state_dict()
    changed = {k for k in old if old[k].shape != new[k].shape or not torch.equal(old[k], new[k])}
    assert changed == {"layer1.conv1.weight", "layer1.bn1.weight", "layer1.bn1.bias",
                       "layer1.bn1.running_mean", "layer1.bn1.running_var",
                       "layer1.conv2.weight"}  # fmt: skip
    kept = select_channels(group_covariance(graph.groups[1], spectra, dict(model.named_modules())),
                           8)  # fmt: skip
    assert torch.equal(new["layer1.conv1.weight"], old["layer1.conv1.weight"][kept])
    assert torch.equal(new["layer1.bn1.running_var"], old["layer1.bn1.running_var"][kept])
    expected = reconstruct_weight(old["layer1.conv2.weight"],
                                  spectra.covariance("layer1.conv2:in"), kept)  # fmt: skip
    assert torch.equal(new["layer1.conv2.weight"], expected)
    stream = inherit_resize(model, {"stem.0": 8}, spectra, x[:1], graph=graph).state_dict()
    tensors = read_tensors(model, x[:1], list(graph.groups[0].consumers))
    sigma = group_covariance(graph.groups[0], spectra, dict(model.named_modules()), "", tensors)
    kept = select_channels(sigma, 8)
    for consumer in ("layer1.conv1", "layer2.conv1"):  # each corrected from its own :in map
        own = spectra.covariance(f"{consumer}:in")
        expected = reconstruct_weight(old[f"{consumer}.weight"], own, kept)
        assert torch.equal(stream[f"{consumer}.weight"], expected), consumer


def test_growth_with_batchnorm_keeps_the_function_and_new_channels_are_seeded(trained):
    model, spectra, x, graph = trained
    wider = {g.name: g.width * 3 // 2 for g in graph.groups}
    grown = inherit_resize(model, wider, spectra, x[:1], graph=graph, seed=1)
    assert relative_error(grown, model, x) < 1e-6
    conv = grown.layer1.conv2.weight
    assert torch.equal(conv[:16, :16], model.layer1.conv2.weight)
    assert not conv[:16, 16:].any() and conv[16:].abs().min() > 0  # new rows fresh
    bn = grown.layer1.bn2
    assert bn.weight[16:].eq(1).all() and not bn.bias[16:].any() and bn.running_var[16:].eq(1).all()
    assert not grown.fc.weight[:, 32:].any()
    again = inherit_resize(model, wider, spectra, x[:1], graph=graph, seed=1)
    other = inherit_resize(model, wider, spectra, x[:1], graph=graph, seed=2)
    assert torch.equal(again.layer1.conv2.weight, conv)
    assert not torch.equal(other.layer1.conv2.weight, conv)


def l1_kept(model: nn.Module, graph, widths: dict) -> dict:
    """Torch-Pruning's magnitude choice (p = 1): the largest L1 norms of the producers'
    output filters, summed over the group's producers."""
    modules = dict(model.named_modules())
    out = {}
    for g in graph.groups:
        norms = sum(modules[p].weight.detach().abs().flatten(1).sum(1) for p in g.producers)
        out[g.name] = norms.topk(widths[g.name]).indices
    return out


def test_trained_network_resized_closer_than_random_and_l1_channels(trained):
    model, spectra, x, graph = trained
    widths = {g.name: g.width // 2 for g in graph.groups}
    ours = relative_error(inherit_resize(model, widths, spectra, x[:1], graph=graph), model, x)
    l1 = inherit_resize(model, widths, spectra, x[:1], graph, kept=l1_kept(model, graph, widths),
                        reconstruct=False)  # fmt: skip
    randoms = []
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        kept = {g.name: torch.randperm(g.width, generator=gen)[: widths[g.name]]
                for g in graph.groups}  # fmt: skip
        new = inherit_resize(model, widths, spectra, x[:1], graph, kept=kept, reconstruct=False)
        randoms.append(relative_error(new, model, x))
    # measured 2026-12: ours 0.67, L1 0.91, random 0.96-1.08 (see BENCHMARKS.md)
    assert ours < relative_error(l1, model, x) and ours < min(randoms)


def test_selection_leaves_less_variance_unexplained_than_random_and_l1(trained):
    model, spectra, x, graph = trained
    modules = dict(model.named_modules())
    tensors = read_tensors(model, x[:1], [c for g in graph.groups for c in g.consumers])
    widths = {g.name: g.width // 2 for g in graph.groups}
    l1 = l1_kept(model, graph, widths)
    gen = torch.Generator().manual_seed(0)
    for g in graph.groups:
        sigma = group_covariance(g, spectra, modules, "", tensors)

        def unexplained(kept, sigma=sigma):
            kept = torch.as_tensor(kept)
            mask = torch.ones(len(sigma), dtype=torch.bool)
            mask[kept] = False
            skk, sdk = sigma[kept][:, kept], sigma[mask][:, kept]
            return float((sigma[mask][:, mask] - sdk @ torch.linalg.pinv(skk) @ sdk.T).trace())

        ours = unexplained(select_channels(sigma, widths[g.name]))
        random = [unexplained(torch.randperm(g.width, generator=gen)[: widths[g.name]])
                  for _ in range(5)]  # fmt: skip
        assert ours < unexplained(l1[g.name]) and ours < sum(random) / 5, g.name


class Inverted(nn.Module):
    """1x1 expansion, depthwise 3x3, 1x1 projection (MobileNetV2's block, no residual)."""

    def __init__(self) -> None:
        super().__init__()
        self.expand, self.bn1 = nn.Conv2d(3, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.project = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.project(F.relu(self.bn2(self.dw(F.relu(self.bn1(self.expand(x)))))))


def test_depthwise_takes_the_kept_channels_and_its_consumer_gets_the_correction():
    torch.manual_seed(0)
    model, x = Inverted().eval(), torch.randn(32, 3, 8, 8)
    spectra = own_spectra(model, x)
    new = inherit_resize(model, {"expand": 4}, spectra, x[:1])
    # the depthwise conv does not mix channels: the group's first mixing consumer is project
    kept = select_channels(spectra.covariance("project:in"), 4)
    assert torch.equal(new.dw.weight, model.dw.weight[kept])
    assert torch.equal(new.expand.weight, model.expand.weight[kept])
    expected = reconstruct_weight(model.project.weight, spectra.covariance("project:in"), kept)
    assert torch.equal(new.project.weight, expected)


class Grouped(nn.Module):
    """1x1, grouped 3x3 (``groups`` conv groups), 1x1: ResNeXt's inner block."""

    def __init__(self, width: int, groups: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2, self.conv3 = nn.BatchNorm2d(width), nn.Conv2d(width, 3, 1)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return self.conv3(F.relu(self.bn2(self.conv2(y))))


def test_grouped_conv_selects_within_its_conv_groups_and_keeps_them_apart():
    torch.manual_seed(0)
    model, x = Grouped(8, 2).eval(), torch.randn(32, 3, 8, 8)  # group width 4
    spectra = own_spectra(model, x)
    graph = trace_model(model, x[:1])
    new = inherit_resize(model, {"conv1": 4}, spectra, x[:1], graph=graph)
    assert new.conv2.groups == 1  # 4 channels in conv groups of 4
    kept = select_channels(
        group_covariance(graph.groups[0], spectra, dict(model.named_modules()),
                         tensors={"conv2": 0, "conv3": 1}), 4, groups=2)  # fmt: skip
    assert (kept < 4).sum() == 2
    assert torch.equal(new.conv1.weight, model.conv1.weight[kept])
    assert not new.conv2.weight[:2, 2:].any() and not new.conv2.weight[2:, :2].any()
    grown = inherit_resize(model, {"conv1": 12}, spectra, x[:1], graph=graph)
    assert grown.conv2.groups == 3 and relative_error(grown, model, x) < 1e-6
    assert torch.equal(grown.conv2.weight[:8], model.conv2.weight)
    wide = Grouped(16, 4).eval()  # group width 4; 12 keeps 3 of each old group of 4
    with pytest.raises(EigenarchError, match="do not fill whole new conv groups of 4"):
        inherit_resize(wide, {"conv1": 12}, own_spectra(wide, x), x[:1])


# --- refusals ----------------------------------------------------------------------------


def test_spectra_of_another_model_are_refused_naming_the_map(trained):
    model, spectra, x, graph = trained
    narrow = own_spectra(Tiny(width=8), x)
    with pytest.raises(EigenarchError, match=r"map 'stem.0:out' has 8 channels, but stem.0 of "
                       r"Tiny has 16 \(spectra of another model\?\)"):  # fmt: skip
        inherit_resize(model, {"stem.0": 8}, narrow, x[:1], graph=graph)
    foreign = Spectra({"body.conv9:in": torch.eye(3)}, {"body.conv9:in": 1})
    with pytest.raises(EigenarchError, match="map 'body.conv9:in' names no conv / linear layer"):
        inherit_resize(model, {"stem.0": 8}, foreign, x[:1], graph=graph)
    with pytest.raises(EigenarchError, match="no map of these spectra .* starts with 'backbone.'"):
        inherit_resize(model, {"stem.0": 8}, spectra, x[:1], graph=graph, prefix="backbone.")
    with pytest.raises(EigenarchError, match=r"kept channels of group 'stem.0': expected 8 "):
        inherit_resize(model, {"stem.0": 8}, spectra, x[:1], graph, kept={"stem.0": [0] * 8})
