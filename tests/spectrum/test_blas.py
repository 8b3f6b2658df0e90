"""The GIL-releasing BLAS calls: every layout a factor comes in, the triangle they write."""

import pytest
import torch

from eigenarch.spectrum import blas


def _layouts(channels: int, positions: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(channels * 100 + positions)
    rows = torch.randn(channels, positions, generator=g, dtype=dtype)
    return {
        "row-major": rows,
        "column-major": rows.T.contiguous().T,
        "a block of a row-major": torch.randn(channels + 5, positions + 3, generator=g,
                                              dtype=dtype)[2 : 2 + channels, 1 : 1 + positions],
        "a block of a column-major": torch.randn(positions + 3, channels + 4, generator=g,
                                                 dtype=dtype).T[2 : 2 + channels, 1:-2],
        "every other column (copied)": torch.randn(channels, 2 * positions, generator=g,
                                                   dtype=dtype)[:, ::2],
    }  # fmt: skip


SHAPES = [(7, 5), (1, 9), (9, 1), (1, 1), (70, 130)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("channels", "positions"), SHAPES)
def test_syrk_adds_into_the_upper_triangle_only(dtype, channels, positions):
    for layout, matrix in _layouts(channels, positions, dtype).items():
        start = torch.arange(channels * channels, dtype=dtype).reshape(channels, channels)
        out = start.clone()
        blas.syrk(out, matrix, 0.25)
        exact = start.double() + 0.25 * matrix.double() @ matrix.double().T
        tolerance = 1e-6 if dtype == torch.float32 else 1e-14
        upper = torch.ones(channels, channels, dtype=torch.bool).triu()
        error = (out.double() - exact)[upper].abs().max() / exact.abs().max()
        assert error < tolerance, layout
        assert torch.equal(out[~upper], start[~upper]), layout  # the lower triangle as it was


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("rows", "positions"), SHAPES)
@pytest.mark.parametrize("columns", [1, 6])
def test_gemm_adds_left_times_right_transposed(dtype, rows, positions, columns):
    rights = _layouts(columns, positions, dtype)
    for (left_layout, left), right_layout in zip(_layouts(rows, positions, dtype).items(),
                                                 [*rights][::-1], strict=True):  # fmt: skip
        right = rights[right_layout]
        out = torch.full((rows, columns), 3.0, dtype=dtype)
        blas.gemm(out, left, right, -2.0)
        exact = 3.0 - 2.0 * left.double() @ right.double().T
        tolerance = 1e-6 if dtype == torch.float32 else 1e-14
        assert (out.double() - exact).abs().max() / exact.abs().max() < tolerance, (
            left_layout, right_layout)  # fmt: skip


def test_empty_factors_add_nothing():
    out = torch.ones(3, 3)
    blas.syrk(out, torch.empty(3, 0), 1.0)
    blas.gemm(out, torch.empty(3, 0), torch.empty(3, 0), 1.0)
    assert torch.equal(out, torch.ones(3, 3))


def test_mismatched_or_non_contiguous_tensors_are_refused():
    with pytest.raises(ValueError, match="contiguous float32 / float64 CPU tensor"):
        blas.syrk(torch.zeros(4, 4).T[:3, :3], torch.zeros(3, 2), 1.0)
    with pytest.raises(ValueError, match="float32 CPU tensors like out"):
        blas.syrk(torch.zeros(3, 3), torch.zeros(3, 2, dtype=torch.float64), 1.0)
