"""docs/your-model.md, tried end to end: the page's own factory file and weights in the
forms it lists, through ``eigenarch spectrum`` on the embedded shapes data."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
import torchvision

from eigenarch.spectrum import Spectra

DOC = Path(__file__).parents[2] / "docs" / "your-model.md"


def _doc_factory_file(folder: Path) -> Path:
    """docs/your-model.md's ``my_detector.py`` (its python block), written into ``folder``."""
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    path = folder / "my_detector.py"
    path.write_text(code, encoding="utf-8")
    return path


def _spectrum(run_cli, shapes_root, out, *args):
    r = run_cli("spectrum", "--data", shapes_root, "--images", "12", "--workers", "0",
                "--batch-size", "4", "--out", out, *args)  # fmt: skip
    assert r.code == 0, r.stderr
    return Spectra.load(out)


def _same(a: Spectra, b: Spectra) -> bool:
    return a.names == b.names and all(
        torch.allclose(a.covariance(n), b.covariance(n), rtol=1e-6, atol=1e-9) for n in a.names
    )


def test_own_model_code_with_own_weights(run_cli, shapes_root, tmp_path):
    factory = _doc_factory_file(tmp_path)
    found = importlib.util.spec_from_file_location("doc_my_detector", factory)
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    torch.manual_seed(7)
    trained = module.tiny_detector().state_dict()  # as if trained: saved by a DDP run
    weights = tmp_path / "my_detector.pth"
    ddp = {f"module.{k}": v for k, v in trained.items()}
    torch.save({"model": ddp, "optimizer": {}, "epoch": 3}, weights)

    spec = f"{factory}:tiny_detector"
    runs = [_spectrum(run_cli, shapes_root, tmp_path / f"w{seed}.safetensors", "--model", spec,
                      "--weights", weights, "--seed", seed, "--include", "backbone.*")
            for seed in (0, 1)]  # fmt: skip
    assert runs[0].names == ["backbone.0:in", "backbone.0:out", "backbone.2:in", "backbone.2:out"]
    assert runs[0].channels("backbone.2:out") == 16
    assert runs[0].samples("backbone.0:in") > 0
    assert runs[0].meta["weights"] == str(weights)
    assert _same(*runs)  # the file's weights, whatever seed initialised the model
    random = _spectrum(run_cli, shapes_root, tmp_path / "r.safetensors", "--model", spec,
                       "--seed", "1", "--include", "backbone.*")  # fmt: skip
    assert not _same(runs[0], random)  # ... and not the factory's random ones


def test_builder_with_a_torchvision_references_checkpoint(run_cli, shapes_root, tmp_path):
    torch.manual_seed(2)
    weights = tmp_path / "model_25.pth"
    model = torchvision.models.resnet18(num_classes=10)
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 25, "args": {}}, weights)
    r = run_cli("spectrum", "--data", shapes_root, "--images", "4", "--workers", "0",
                "--out", tmp_path / "x", "--model", "resnet18", "--weights", weights)  # fmt: skip
    assert r.code == 2 and r.stderr.count("\n") == 1, r.stderr  # 10 classes, not 1000
    assert "fc.weight has shape (10, 512), expected (1000, 512)" in r.stderr
    torch.save({"model": torchvision.models.resnet18().state_dict(), "epoch": 25}, weights)
    spectra = _spectrum(run_cli, shapes_root, tmp_path / "c.safetensors", "--model", "resnet18",
                        "--weights", weights, "--include", "fc")  # fmt: skip
    assert spectra.names == ["fc:in", "fc:out"] and spectra.samples("fc:in") == 12
