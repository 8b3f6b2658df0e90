"""Layers whose weight the model uses without calling them (Swin's attention): collected
through their ``F.linear`` / ``F.conv2d`` calls, or named; never left out silently."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from eigenarch.spectrum import SpectrumCollector
from eigenarch.spectrum.functional import UncollectedMapsWarning, function_name
from eigenarch.spectrum.stream import uncollected_notes


class Functional(nn.Module):
    """Calls its conv once as a module and once through ``F.conv2d`` with another stride,
    its linear only through ``F.linear`` (as torchvision's Swin does its qkv)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1, bias=False)  # a derivable 1x1: its :out is W S W^T
        self.lin = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.conv(x)
        b = F.conv2d(x, self.conv.weight, stride=2)
        rows = torch.cat([a.flatten(2), b.flatten(2)], dim=2).transpose(1, 2)
        return F.linear(input=rows, weight=self.lin.weight, bias=self.lin.bias)


class Modules(nn.Module):
    """The same computation by module calls: the strided conv shares ``conv``'s weight
    (each tied layer's own call counts for it alone)."""

    def __init__(self, functional: Functional) -> None:
        super().__init__()
        self.conv = functional.conv
        self.strided = nn.Conv2d(3, 8, 1, stride=2, bias=False)
        self.strided.weight = functional.conv.weight
        self.lin = functional.lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.cat([self.conv(x).flatten(2), self.strided(x).flatten(2)], dim=2)
        return self.lin(rows.transpose(1, 2))


def _spectra(model: nn.Module, batches: list[torch.Tensor], **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to say: every use is collected
        with SpectrumCollector(model, **kwargs) as collector, torch.no_grad():
            for x in batches:
                model(x)
    return collector, collector.spectra()


def test_functional_calls_of_a_layers_weight_count_as_calls_of_the_layer():
    torch.manual_seed(0)
    functional = Functional()
    batches = [torch.rand(2, 3, 6, 6) + 1 for _ in range(3)]  # a non-zero mean: W S W^T
    collector, got = _spectra(functional, batches)
    _, want = _spectra(Modules(functional), batches, derive=False)
    assert collector.names == ["conv:in", "conv:out", "lin:in", "lin:out"]
    assert collector.derived == []  # a functional call with its own stride: multiplied
    assert want.samples("conv:in") == want.samples("strided:in") == 6
    for side in ("in", "out"):
        n_conv, n_strided = want.samples(f"conv:{side}"), want.samples(f"strided:{side}")
        assert got.samples(f"conv:{side}") == n_conv + n_strided == 12
        expected = (
            n_conv * want.covariance(f"conv:{side}")
            + n_strided * want.covariance(f"strided:{side}")
        ) / (n_conv + n_strided)
        torch.testing.assert_close(got.covariance(f"conv:{side}"), expected, rtol=1e-6, atol=0)
        assert got.samples(f"lin:{side}") == want.samples(f"lin:{side}") == 6 * (36 + 9)
        torch.testing.assert_close(
            got.covariance(f"lin:{side}"), want.covariance(f"lin:{side}"), rtol=1e-6, atol=0
        )


class Matmul(nn.Module):
    """Uses its linear's weight through ``torch.matmul`` on its transpose (not collectable),
    reads only its shape elsewhere; its conv is called."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.lin = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.conv(x).mean((2, 3))
        assert rows.shape[1] == self.lin.weight.shape[1]  # a read of metadata is no use
        return torch.matmul(rows, self.lin.weight.t()) + self.lin.bias


def test_uses_that_cannot_be_collected_are_named_in_one_line():
    model, x = Matmul(), torch.rand(2, 3, 5, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with SpectrumCollector(model) as collector, torch.no_grad():
            model.lin.weight.t()  # outside the forward: not the model's use
    assert collector.missed == {}
    with pytest.warns(UncollectedMapsWarning) as caught:
        with collector, torch.no_grad():
            model(x)
            model(x)
    (message,) = [str(w.message) for w in caught]  # one line, once
    assert collector.missed == {"lin:in": "Tensor.t", "lin:out": "Tensor.t"}
    assert message.startswith(
        "2 map(s) not collected in full: lin:in, lin:out (the model used "
        "their layer's weight through Tensor.t without calling"
    )
    assert collector.spectra().names == ["conv:in", "conv:out"]


def test_function_names_are_as_written():
    assert function_name(F.linear) == "torch.nn.functional.linear"
    assert function_name(F.multi_head_attention_forward) == (
        "torch.nn.functional.multi_head_attention_forward"
    )
    assert function_name(torch.matmul) == "torch.matmul"
    assert function_name(torch.Tensor.t) == "Tensor.t"


def test_swin_t_attention_maps_are_collected():
    # torchvision's Swin passes attn.qkv.weight and attn.proj.weight to F.linear itself.
    model = torchvision.models.swin_t().eval()
    collector, spectra = _spectra(model, [torch.rand(1, 3, 32, 32)], include=["features.1.*"])
    block = "features.1.0.attn"
    expected = [
        f"features.1.{b}.{layer}:{side}"
        for b in (0, 1)
        for layer in ("attn.qkv", "attn.proj", "mlp.0", "mlp.3")
        for side in ("in", "out")
    ]
    assert collector.names == expected and spectra.names == expected
    # 8 x 8 tokens, padded to 14 x 14 for 7 x 7 windows: 4 windows of 49 rows.
    assert spectra.samples(f"{block}.qkv:in") == spectra.samples(f"{block}.proj:out") == 4 * 49
    assert spectra.samples("features.1.0.mlp.0:in") == 64  # the unpadded tokens


def test_vit_b_16_out_proj_is_named_and_the_rest_collected():
    model = torchvision.models.vit_b_16(image_size=32).eval()
    out_proj = "encoder.layers.encoder_layer_0.self_attention.out_proj"
    with pytest.warns(UserWarning, match=rf"cannot hook 2 map\(s\): {out_proj}:in"):
        collector = SpectrumCollector(model, include=["encoder.layers.encoder_layer_0.*"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with collector, torch.no_grad():
            model(torch.rand(1, 3, 32, 32))
    assert collector.missed == {}
    assert (
        collector.spectra().names
        == collector.names
        == [
            f"encoder.layers.encoder_layer_0.mlp.{i}:{side}"
            for i in (0, 3)
            for side in ("in", "out")
        ]
    )


def test_maxvit_t_every_map_is_collected():
    model = torchvision.models.maxvit_t().eval()
    collector, spectra = _spectra(
        model, [torch.rand(1, 3, 224, 224)], include=["blocks.0.layers.0.*"]
    )
    block = model.blocks[0].layers[0]
    layers = [
        f"blocks.0.layers.0.{path}"
        for path, m in block.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    assert len(layers) == 14
    assert spectra.names == collector.names == [f"{p}:{s}" for p in layers for s in ("in", "out")]
    assert "blocks.0.layers.0.layers.window_attention.attn_layer.1.to_qkv:in" in spectra.names


def test_the_spectrum_command_names_every_map_it_lacks():
    model = Matmul()
    model.spare = nn.Linear(2, 2)  # never called
    with pytest.warns(UncollectedMapsWarning):
        with SpectrumCollector(model) as collector, torch.no_grad():
            model(torch.rand(1, 3, 5, 5))
    assert uncollected_notes(collector, collector.spectra()) == [
        "2 map(s) not collected in full: lin:in, lin:out (the model used their layer's weight "
        "through Tensor.t without calling the layer; only F.linear / F.conv2d / "
        "F.conv_transpose2d calls with it are collected)",
        "2 map(s) saw no sample on these images (their layer never ran, or on nothing) and are "
        "left out: spare:in, spare:out",
    ]
