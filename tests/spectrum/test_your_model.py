"""docs/your-model.md, tried end to end: the page's own factory file and weights in the
forms it lists, through ``eigenarch spectrum`` on the embedded shapes data; and its route 3,
the page's own commands over checkpoints written as torchvision's reference scripts do."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
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
    args = argparse.Namespace(model="resnet18", epochs=26, lr_steps=[16, 22])  # as they save it
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 25, "args": args}, weights)
    r = run_cli("spectrum", "--data", shapes_root, "--images", "4", "--workers", "0",
                "--out", tmp_path / "x", "--model", "resnet18", "--weights", weights)  # fmt: skip
    assert r.code == 2 and r.stderr.count("\n") == 1, r.stderr  # 10 classes, not 1000
    assert "fc.weight has shape (10, 512), expected (1000, 512)" in r.stderr
    torch.save({"model": torchvision.models.resnet18().state_dict(), "epoch": 25}, weights)
    spectra = _spectrum(run_cli, shapes_root, tmp_path / "c.safetensors", "--model", "resnet18",
                        "--weights", weights, "--include", "fc")  # fmt: skip
    assert spectra.names == ["fc:in", "fc:out"] and spectra.samples("fc:in") == 12


def _doc_commands(section: str) -> list[list[str]]:
    """The commands of the ``bash`` block of the page's ``section`` (lines joined)."""
    text = DOC.read_text(encoding="utf-8").split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", text, re.S)
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line]


def test_route_3_the_page_commands_over_a_reference_run(run_cli, shapes_root, tmp_path):
    factory = _doc_factory_file(tmp_path)
    found = importlib.util.spec_from_file_location("doc_my_detector_3", factory)
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    args = argparse.Namespace(data_path=str(shapes_root), model="tiny", epochs=4, lr_steps=[2],
                              lr_scheduler="multisteplr", lr=0.02)  # fmt: skip
    for run, seed in (("run", 0), ("scratch", 1)):
        (tmp_path / run).mkdir()
        torch.manual_seed(seed)
        model = module.tiny_detector()
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, args.lr_steps)
        for epoch in (3, 0, 1):
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(),
                "args": args,
                "epoch": epoch,
            }
            for name in (f"model_{epoch}.pth", "checkpoint.pth"):
                torch.save(checkpoint, tmp_path / run / name)  # fmt: skip
    commands = _doc_commands("3.")
    assert [c[1] for c in commands] == ["dynamics", "dynamics", "compare", "report"]
    swap = {"fasterrcnn_resnet50_fpn": f"{factory}:tiny_detector", "data/shapes": shapes_root,
            "1000": "3"}  # fmt: skip
    for command in commands:
        words = [str(swap.get(w, w)) for w in command[1:]]
        words = [str(tmp_path / w) if w.startswith(("run", "scratch")) else w for w in words]
        r = run_cli(*words, *(["--workers", "0"] if words[0] == "dynamics" else []))
        assert r.code == 0, (words, r.stderr)
    dynamics = json.loads((tmp_path / "runs" / "mine" / "dynamics.json").read_text())
    assert (dynamics["iterations"], dynamics["milestones"], dynamics["length"]) == (
        [1, 2, 4],
        [2],
        4,
    )
    assert (tmp_path / "runs" / "report" / "report.html").is_file()
