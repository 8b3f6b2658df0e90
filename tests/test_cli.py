"""The ``eigenarch`` entry point: clean finishes leave the process group, failures do not."""

from __future__ import annotations

import pytest
import torch.distributed as dist


@pytest.fixture
def process_group(tmp_path):
    """A one-process gloo group, as ``torchrun`` would have made (destroyed if still there)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_a_clean_finish_leaves_the_process_group(process_group, run_cli):
    assert run_cli("spectrum", "--help").code == 0
    assert not dist.is_initialized()


def test_a_failure_keeps_the_process_group(process_group, run_cli):
    # Another rank may still wait in a collective: destroying the group could hang it.
    result = run_cli("search", "--target", "macs=resnet50", "--out", "x.json")
    assert result.code == 2 and "error:" in result.stderr
    assert dist.is_initialized()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("search", "--spectra", "s", "--target", "t"), "eigenarch search: Missing option '--out'"),
        (("spectrum", "show"), "eigenarch spectrum show: Missing argument 'file'"),
        (("search", "--side", "sideways"), "Invalid value for '--side'"),
        (("nonsense",), "eigenarch: No such command 'nonsense'"),
    ],
)
def test_command_line_mistakes_give_one_line(run_cli, args, message):
    result = run_cli(*args)
    assert result.code == 2 and result.stderr.startswith("error:"), result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
