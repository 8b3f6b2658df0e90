"""``bench_backbones``: interleaved latency, a peak memory that sees each forward, MACs of the
benched forward beside the SPEC-4 cost (issue 21 item 3)."""

from __future__ import annotations

import pytest
import torch

from eigenarch.errors import EigenarchError
from eigenarch.models.backbone import BackboneOptions, parse_backbone
from eigenarch.models.bench import _interleaved, _memory_probe, bench_backbones

SPEC, BASE = "16,16,32,16,32,32,64,32,64", "16,16,64,16,64,32,128,32,128"
#: Small heads, few proposals: a detector forward in well under a second.
SMALL = {"fpn_channels": 32, "head_channels": 32, "representation": 64, "gn_groups": 8,
         "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_test": 50}  # fmt: skip
MIB = 1 << 20


def test_rounds_rotate_and_warmup_is_dropped():
    calls = []
    forwards = {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}
    times = _interleaved(forwards, repeats=2, warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {k: len(v) for k, v in times.items()} == {"a": 2, "b": 2, "c": 2}


def test_cpu_peak_sees_every_forward_not_only_the_first():
    """Four 8 MiB tensors alive at once: 32 MiB each time. glibc keeps freed blocks resident
    and serves the next ones from them (after other tests' large tensors: from the first
    time), so a resident-set peak without ``malloc_trim`` reads ~0."""
    method, measure = _memory_probe(torch.device("cpu"))
    if measure(lambda: None) is None:
        pytest.skip(method)

    def forward() -> None:
        alive = [torch.ones(2 * MIB) for _ in range(4)]  # 4 x 8 MiB, touched
        del alive

    peaks = [measure(forward) / MIB for _ in range(3)]
    assert all(31 <= p < 40 for p in peaks), peaks


def test_bench_rows_costs_and_threads():
    options = BackboneOptions(gn_groups=8)
    threads = torch.get_num_threads()
    result = bench_backbones(parse_backbone(SPEC, options), BASE, size=64, threads=2, repeats=2,
                             warmup=0, detector_options=SMALL)  # fmt: skip
    assert torch.get_num_threads() == threads
    assert [(r.network, r.part) for r in result.rows] == [
        ("spec", "body"), ("spec", "backbone"), ("spec", "detector"),
        ("base", "body"), ("base", "backbone"), ("base", "detector"),
    ]  # fmt: skip
    spec, base = result.row("spec", "backbone"), result.row("base", "backbone")
    assert result.row("spec", "body").macs < spec.macs  # the FPN on top
    assert spec.cost_macs == parse_backbone(SPEC, options).cost().macs
    assert base.cost_params == parse_backbone(BASE, options).cost().params  # --base: spec's GN 8
    assert spec.macs < base.macs < result.row("base", "detector").macs
    assert all(0 < r.min_s <= r.median_s for r in result.rows)
    assert result.threads == 2 and result.repeats == 2


def test_bench_refusals():
    with pytest.raises(EigenarchError, match=r"--threads 0: expected an integer >= 1"):
        bench_backbones(SPEC, BASE, threads=0)
    with pytest.raises(EigenarchError, match=r"--detector 'retinanet': expected one of"):
        bench_backbones(SPEC, BASE, detector="retinanet")


def test_default_base_is_the_network_the_spec_resizes():
    from eigenarch.models.builders import BuilderBackbone
    from eigenarch.nas.shufflenet import SPACES, DetnasBackbone
    from eigenarch.widths.cost import RESNET50_WIDTHS

    resianet = parse_backbone(SPEC, BackboneOptions(gn_groups=8)).unresized()
    assert (resianet.widths, resianet.gn_groups) == (RESNET50_WIDTHS, 8)
    builder = BuilderBackbone("resnet18", {"conv1": 32}, "gn", 8)
    assert builder.unresized() == BuilderBackbone("resnet18", {}, "gn", 8, {"name": "resnet18"})
    with pytest.raises(EigenarchError, match="a DetNAS network: no base network of its own"):
        DetnasBackbone(SPACES[1], (0,) * sum(SPACES[1].depths)).unresized()
