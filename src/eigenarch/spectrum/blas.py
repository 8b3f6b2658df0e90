"""In-place BLAS ``syrk`` / ``gemm`` on CPU tensors that release the GIL while they run.

SciPy's ``scipy.linalg.blas`` wrappers hold the GIL for the whole call, so two of them on
two threads run one after the other. The same routines are exported by SciPy's public Cython
API (``scipy.linalg.cython_blas``) as function pointers; called through a ``ctypes`` foreign
function (which releases the GIL), products on worker threads run side by side. Matrices are
passed by pointer and strides: nothing is copied unless neither stride of a factor is 1.
"""

from __future__ import annotations

import ctypes

import scipy.linalg.cython_blas as cython_blas
import torch
from torch import Tensor

_INT = ctypes.POINTER(ctypes.c_int)
_SCALAR = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}
_PREFIX = {torch.float32: "s", torch.float64: "d"}


def _routine(name: str, arguments: list) -> ctypes._CFuncPtr:
    capsule = cython_blas.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return ctypes.CFUNCTYPE(None, *arguments)(get_pointer(capsule, get_name(capsule)))


def _routines() -> dict[tuple[str, torch.dtype], ctypes._CFuncPtr]:
    table = {}
    for dtype, scalar in _SCALAR.items():
        pointer = ctypes.POINTER(scalar)
        char = ctypes.c_char_p
        # Fortran BLAS: every argument by reference
        table["syrk", dtype] = _routine(f"{_PREFIX[dtype]}syrk", [
            char, char, _INT, _INT, pointer, pointer, _INT, pointer, pointer, _INT])  # fmt: skip
        table["gemm", dtype] = _routine(f"{_PREFIX[dtype]}gemm", [
            char, char, _INT, _INT, _INT, pointer, pointer, _INT, pointer, _INT, pointer,
            pointer, _INT])  # fmt: skip
    return table


_ROUTINES = _routines()


def _column_major(matrix: Tensor) -> tuple[Tensor, bool, int]:
    """``matrix`` (R, K) as a Fortran operand: (tensor to pass, row-major?, leading dim).

    A column-major matrix is passed as it is (``N``); a row-major one as the column-major
    ``(K, R)`` it is in memory (``T``); anything else is copied row-major first."""
    rows, cols = matrix.shape
    if matrix.stride(0) == 1 and matrix.stride(1) >= max(1, rows):
        return matrix, False, matrix.stride(1)
    if matrix.stride(1) != 1 or matrix.stride(0) < max(1, cols):
        matrix = matrix.contiguous()
    return matrix, True, max(1, matrix.stride(0) if rows > 1 else cols)


def _arguments(dtype: torch.dtype, *values: Tensor | int | float | bytes) -> list:
    scalar, converted = _SCALAR[dtype], []
    for value in values:
        if isinstance(value, Tensor):
            converted.append(ctypes.cast(value.data_ptr(), ctypes.POINTER(scalar)))
        elif isinstance(value, bytes):
            converted.append(value)
        elif isinstance(value, float):
            converted.append(ctypes.byref(scalar(value)))
        else:
            converted.append(ctypes.byref(ctypes.c_int(value)))
    return converted


def _check(out: Tensor, *factors: Tensor) -> None:
    if out.device.type != "cpu" or out.dtype not in _SCALAR or not out.is_contiguous():
        raise ValueError(f"out: expected a contiguous float32 / float64 CPU tensor, got "
                         f"{out.dtype} on {out.device}")  # fmt: skip
    if any(f.dtype != out.dtype or f.device != out.device for f in factors):
        raise ValueError(f"factors: expected {out.dtype} CPU tensors like out")


def syrk(out: Tensor, matrix: Tensor, alpha: float) -> None:
    """``out += alpha * matrix @ matrix.T`` in the upper triangle of the contiguous ``(C, C)``
    ``out``, for a ``(C, K)`` ``matrix`` of the same dtype (its lower triangle untouched)."""
    _check(out, matrix)
    channels, positions = matrix.shape
    if channels == 0 or positions == 0:
        return
    factor, row_major, lead = _column_major(matrix)
    # ``out``'s memory is the Fortran matrix ``out.T``, whose lower triangle is our upper one
    _ROUTINES["syrk", out.dtype](*_arguments(
        out.dtype, b"L", b"T" if row_major else b"N", channels, positions, float(alpha),
        factor, lead, 1.0, out, channels))  # fmt: skip


def gemm(out: Tensor, left: Tensor, right: Tensor, alpha: float) -> None:
    """``out += alpha * left @ right.T`` for a contiguous ``(R, S)`` ``out``, ``(R, K)``
    ``left`` and ``(S, K)`` ``right`` of its dtype."""
    _check(out, left, right)
    (rows, positions), columns = left.shape, right.shape[0]
    if rows == 0 or columns == 0 or positions == 0:
        return
    # Fortran: out.T (S, R) += alpha * right (S, K) @ left.T (K, R)
    a, a_row_major, lda = _column_major(right)
    b, b_row_major, ldb = _column_major(left)  # a row-major left is a column-major left.T
    _ROUTINES["gemm", out.dtype](*_arguments(
        out.dtype, b"T" if a_row_major else b"N", b"N" if b_row_major else b"T",
        columns, rows, positions, float(alpha), a, lda, b, ldb, 1.0, out, columns))  # fmt: skip
