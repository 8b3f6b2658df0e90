"""``EigenarchError``: one line, also when raised in a DataLoader worker process."""

from __future__ import annotations

import pickle
import shutil

import pytest
import torch

from eigenarch.data.shapes import ShapesClsConfig, generate_shapes_cls
from eigenarch.errors import EigenarchError

from .conftest import TINY_WIDTHS
from .train.conftest import TINY_ARGS


class _Failing(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        if index == 2:
            raise EigenarchError("img/000002.jpg: unreadable image (cannot identify image file)")
        return index


def test_an_error_raised_in_a_loader_worker_keeps_its_one_line():
    loader = torch.utils.data.DataLoader(_Failing(), batch_size=1, num_workers=1)
    with pytest.raises(EigenarchError) as info:
        list(loader)
    assert str(info.value) == "img/000002.jpg: unreadable image (cannot identify image file)"
    assert "Original Traceback" in info.value.worker_traceback


def test_plain_errors_are_unchanged_and_pickle():
    error = pickle.loads(pickle.dumps(EigenarchError("x.json: missing key 'a'")))
    assert str(error) == "x.json: missing key 'a'" and error.worker_traceback is None


@pytest.fixture
def corrupt_root(shapes_root, tmp_path):
    """The tiny shapes set with every image undecodable."""
    root = shutil.copytree(shapes_root, tmp_path / "data")
    for image in [*root.glob("train/*.jpg"), *root.glob("val/*.jpg")]:
        image.write_bytes(b"not a jpeg")
    return root


def _one_line_error(result, what: str) -> None:
    assert result.code == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and what in lines[0] and "unreadable image" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "DataLoader worker" not in result.stderr


def test_spectrum_and_train_report_a_corrupt_image_from_their_workers(
    corrupt_root, tmp_path, run_cli
):
    out = tmp_path / "s.safetensors"
    result = run_cli("spectrum", "--model", "resnet18", "--data", corrupt_root, "--images", "2",
                     "--workers", "1", "--out", out)  # fmt: skip
    _one_line_error(result, "train/0000")
    assert list(tmp_path.glob("s.safetensors*")) == []
    args = ["--data", corrupt_root, "--out", tmp_path / "run", "--iters", "2", *TINY_ARGS]
    _one_line_error(run_cli("train", *args, "--workers", "1"), "train/0000")
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_pretrain_reports_a_corrupt_image_from_its_workers(tmp_path, run_cli):
    root = tmp_path / "cls"
    generate_shapes_cls(root, ShapesClsConfig(2, 1, size=32), workers=1)
    for image in root.glob("*/*/*.jpg"):
        image.write_bytes(b"")
    result = run_cli("pretrain", "--data", root, "--out", tmp_path / "p.pt", "--backbone",
                     TINY_WIDTHS, "--gn-groups", "8", "--size", "32", "--epochs", "1",
                     "--batch-size", "4", "--workers", "1")  # fmt: skip
    _one_line_error(result, str(root / "train"))
    assert not (tmp_path / "p.pt").exists()


def test_evaluate_reports_a_corrupt_image(corrupt_root, tiny_run, tmp_path, run_cli):
    out = tmp_path / "eval"
    result = run_cli("evaluate", "--run", tiny_run, "--data", corrupt_root, "--out", out)
    _one_line_error(result, "val/0000")
    assert not out.exists()
