"""The tables commands print (rich): COCO metrics, costs, a search's widths, a bench."""

from __future__ import annotations

from rich.table import Column, Table

from eigenarch.evaluation.coco import COCO_METRICS
from eigenarch.models.bench import BenchResult
from eigenarch.widths.cost import ModelCost
from eigenarch.widths.ias import WidthSearchResult


def metrics_table(metrics: dict[str, dict[str, float]]) -> Table:
    """The COCO summary as a rich table: one row per IoU type, one column per metric."""
    table = Table("type", *COCO_METRICS)
    for iou_type, values in metrics.items():
        cells = (f"{100 * values[m]:.1f}" if values[m] >= 0 else "n/a" for m in COCO_METRICS)
        table.add_row(iou_type, *cells)
    return table


def _stage_label(stage: str, widths: tuple[int, ...]) -> str:
    if not widths:
        return ""
    if stage == "stem":
        return str(widths[0])
    if stage == "fc":
        return ""
    s = int(stage[-1])
    return f"{widths[2 * s - 1]}/{widths[2 * s]}"


def cost_table(cost: ModelCost, title: str | None = None) -> Table:
    """Per-stage widths (a ResNet's bottleneck/output, else the stage's output width),
    blocks, MACs and params, with totals."""
    table = Table("stage", "widths", "blocks", "MACs (G)", "params (M)", "% params", title=title)
    last = {cost.stage_of(layer.name): str(layer.out_channels) for layer in cost.layers}
    for stage, (macs, params) in cost.stages().items():
        resnet = bool(cost.depths) and stage.startswith("layer")
        blocks = str(cost.depths[int(stage[-1]) - 1]) if resnet else ""
        table.add_row(
            stage,
            _stage_label(stage, cost.widths) if cost.widths else last[stage],
            blocks,
            f"{macs / 1e9:.3f}",
            f"{params / 1e6:.3f}",
            f"{100 * params / cost.params:.1f}",
        )
    table.add_row(
        "total",
        "",
        str(sum(cost.depths)) if cost.depths else "",
        f"{cost.macs / 1e9:.3f}",
        f"{cost.params / 1e6:.3f}",
        "100.0",
        style="bold",
    )
    return table


def comparison_table(found: ModelCost, base: ModelCost) -> Table:
    """Per-stage widths, MACs and params of a search result beside its base model."""
    table = Table(
        "stage",
        "widths",
        "MACs (G)",
        "params (M)",
        "params",
        title="base ResNet -> searched ResiaNet",
    )
    rows = [
        (stage, base.widths, found.widths, *b, *f)
        for (stage, b), f in zip(base.stages().items(), found.stages().values(), strict=True)
    ]
    rows.append(("total", (), (), base.macs, base.params, found.macs, found.params))
    for stage, bw, fw, bm, bp, fm, fp in rows:
        old, new = (_stage_label(stage, bw), _stage_label(stage, fw)) if bw else ("", "")
        widths = f"{old} -> {new}" if old else ""
        table.add_row(
            stage,
            widths,
            f"{bm / 1e9:.3f} -> {fm / 1e9:.3f}",
            f"{bp / 1e6:.3f} -> {fp / 1e6:.3f}",
            f"{100 * (fp / bp - 1):+.1f}%",
            style="bold" if stage == "total" else None,
        )
    return table


def tie_table(result: WidthSearchResult) -> Table:
    """Every searched width: its groups, base width, adjusted and searched width."""
    table = Table(
        Column("width", overflow="fold"), "base", "adjusted", "searched",
        title="base -> searched widths",
    )  # fmt: skip
    for name, (low, high), adjusted, width in zip(
        result.ties, result.base_ranges, result.adjusted, result.widths, strict=True
    ):
        base = str(low) if low == high else f"{low}-{high}"
        kept = " (kept: no map)" if name in result.fixed else ""
        table.add_row(name, base, f"{adjusted:.1f}", f"{width}{kept}")
    table.add_row(
        "total",
        f"{result.base_macs / 1e9:.3f} G / {result.base_params / 1e6:.3f} M",
        "",
        f"{result.macs / 1e9:.3f} G / {result.params / 1e6:.3f} M",
        style="bold",
    )
    return table


def bench_table(result: BenchResult) -> Table:
    """Per part, the spec beside its base: MACs (classifier at 224 px, SPEC 4; and of the
    benched forward), params, latency (median, min), peak memory, and the spec's ratios."""
    table = Table(
        "part", "network", "MACs 224 (G)", "params (M)", f"MACs {result.size} px (G)",
        "median (ms)", "min (ms)", "peak (MiB)", "MACs / base", "time / base",
        title=f"{result.batch} x {result.size} px, {result.threads} thread(s), {result.device}, "
        f"{result.repeats} interleaved repeats",
    )  # fmt: skip
    for part in dict.fromkeys(r.part for r in result.rows):
        base = result.row("base", part)
        for network in ("spec", "base"):
            row = result.row(network, part)
            peak = "n/a" if row.peak_bytes is None else f"{row.peak_bytes / 2**20:.0f}"
            table.add_row(
                part, network, f"{row.cost_macs / 1e9:.3f}", f"{row.cost_params / 1e6:.2f}",
                f"{row.macs / 1e9:.2f}", f"{1e3 * row.median_s:.1f}", f"{1e3 * row.min_s:.1f}",
                peak, f"{row.macs / base.macs:.2f}", f"{row.median_s / base.median_s:.2f}",
            )  # fmt: skip
    return table
