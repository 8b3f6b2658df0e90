"""Spectra: eigenvalues and measures of SPEC section 3, and the safetensors + JSON file."""

from __future__ import annotations

import errno
import json
import math

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import eigenarch.spectrum.spectra as spectra_module
from eigenarch.errors import EigenarchError
from eigenarch.spectrum import Spectra
from eigenarch.spectrum.spectra import sidecar


def psd(eigenvalues: list[float], seed: int = 0) -> torch.Tensor:
    """A float64 PSD matrix with the given eigenvalues and a random basis."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=g,
                                       dtype=torch.float64))  # fmt: skip
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T


@pytest.fixture
def spectra() -> Spectra:
    covariances = {
        "a:in": psd([4.0, 2.0, 1e-2, 1e-3, 1e-5]),
        "a:out": psd([1.0, 0.5, 0.25], seed=1),
        "dead:out": torch.zeros(2, 2, dtype=torch.float64),
    }
    return Spectra(covariances, {"a:in": 10, "a:out": 10, "dead:out": 3}, {"model": "toy"})


def test_eigenvalues_and_measures(spectra):
    values = spectra.eigenvalues("a:in")
    assert values.dtype == torch.float64
    assert torch.allclose(values, torch.tensor([1.0, 0.5, 2.5e-3, 2.5e-4, 2.5e-6],
                                               dtype=torch.float64), atol=1e-12)  # fmt: skip
    assert spectra.intrinsic_dim("a:in") == 3
    assert spectra.intrinsic_dim("a:in", threshold=10**-3.5) == 3
    assert spectra.intrinsic_dim("a:in", threshold=1e-5) == 4
    lam = np.array([1.0, 0.5, 2.5e-3, 2.5e-4, 2.5e-6])
    assert spectra.degrees_of_freedom("a:in") == pytest.approx((lam / (lam + 1e-3)).sum())
    p = lam / lam.sum()
    assert spectra.effective_rank("a:in") == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert spectra.channels("a:in") == 5 and spectra.samples("a:in") == 10
    assert spectra.names == ["a:in", "a:out", "dead:out"]


def test_intrinsic_dim_counts_ratios_strictly_above_the_threshold():
    """Powers of two are exact in eigvalsh of a diagonal matrix: ratio 2**-10 is exactly T."""
    diagonal = torch.diag(torch.tensor([8.0, 4.0, 8 * 2.0**-10, 2.0**-10], dtype=torch.float64))
    s = Spectra({"m": diagonal}, {"m": 1})
    assert s.eigenvalues("m")[2].item() == 2.0**-10
    assert s.intrinsic_dim("m", threshold=2.0**-10) == 2  # a ratio equal to T is not counted
    assert s.intrinsic_dim("m", threshold=2.0**-10 * (1 - 1e-12)) == 3
    assert s.intrinsic_dim("m", threshold=2.0**-10 * (1 + 1e-12)) == 2
    assert s.intrinsic_dim("m", threshold=2.0**-13 * (1 - 1e-12)) == 4


def test_a_rank_one_map_has_effective_rank_one():
    s = Spectra({"m": psd([3.0, 0.0, 0.0])}, {"m": 1})  # normalised eigenvalues sum to 1
    assert s.effective_rank("m") == pytest.approx(1.0) and s.intrinsic_dim("m") == 1


def test_dead_map(spectra):
    assert not spectra.eigenvalues("dead:out").any()
    assert spectra.intrinsic_dim("dead:out") == 0
    assert spectra.degrees_of_freedom("dead:out") == 0 and spectra.effective_rank("dead:out") == 0


def test_negative_eigenvalues_are_clamped():
    cov = psd([1.0, 0.5, 0.0]) - 1e-12 * torch.eye(3, dtype=torch.float64)
    values = Spectra({"m": cov}, {"m": 1}).eigenvalues("m")
    assert (values >= 0).all() and values[0] == 1


def test_non_finite_covariances_are_named():
    nan = psd([1.0, 0.5])
    nan[0, 1] = float("nan")
    covariances = {"a:in": psd([1.0, 0.5]), "b:out": nan, "c:in": nan * float("inf")}
    match = r"non-finite covariance \(NaN or infinite activations\) in 2 map\(s\): b:out, c:in;"
    with pytest.raises(EigenarchError, match=match):
        Spectra(covariances, dict.fromkeys(covariances, 4))


def test_unknown_map_is_a_clear_error(spectra):
    with pytest.raises(EigenarchError, match="no map named 'a'.*did you mean a:in"):
        spectra.covariance("a")


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=12),
    st.floats(1e-9, 0.9),
    st.floats(1e-9, 0.9),
)
def test_intrinsic_dim_properties(eigenvalues, t1, t2):
    s = Spectra({"m": psd(eigenvalues)}, {"m": 1})
    low, high = sorted((t1, t2))
    c = len(eigenvalues)
    assert 0 <= s.intrinsic_dim("m", high) <= s.intrinsic_dim("m", low) <= c
    assert 0 <= s.degrees_of_freedom("m", low) <= c + 1e-9
    assert not math.isnan(s.effective_rank("m")) and s.effective_rank("m") <= c + 1e-9
    values = s.eigenvalues("m")
    assert (values[:-1] >= values[1:]).all() and ((values >= 0) & (values <= 1)).all()


def test_save_load_round_trip(spectra, tmp_path):
    path = spectra.save(tmp_path / "s.safetensors")
    assert sidecar(path).name == "s.safetensors.json"
    loaded = Spectra.load(path)
    assert loaded.names == spectra.names and loaded.meta == {"model": "toy"}
    for name in spectra.names:
        assert torch.equal(loaded.covariance(name), spectra.covariance(name))
        assert torch.equal(loaded.eigenvalues(name), spectra.eigenvalues(name))
        assert loaded.samples(name) == spectra.samples(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors", "s.safetensors.json"]


def test_corrupted_file_is_refused(spectra, tmp_path):
    path = spectra.save(tmp_path / "s.safetensors")
    data = bytearray(path.read_bytes())
    data[-4] ^= 0xFF  # in the tensors; a flipped header byte fails its parse or its checksum
    path.write_bytes(bytes(data))
    with pytest.raises(EigenarchError, match=r"damaged spectra file \(fails its SHA-256 check\)"):
        Spectra.load(path)


def test_truncated_file_is_refused(spectra, tmp_path):
    path = spectra.save(tmp_path / "s.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(EigenarchError, match="s.safetensors: damaged spectra file"):
        Spectra.load(path)


def test_foreign_files_are_refused(spectra, tmp_path):
    foreign = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(EigenarchError, match="model.safetensors: not a spectra file \\(a safet"):
        Spectra.load(foreign)
    path = spectra.save(tmp_path / "s.safetensors")
    sidecar(path).write_text('{"format": "something-else"}')
    with pytest.raises(EigenarchError, match="not an eigenarch spectra sidecar"):
        Spectra.load(path)
    sidecar(path).write_text("{not json")
    with pytest.raises(EigenarchError, match="not valid JSON"):
        Spectra.load(path)
    with pytest.raises(EigenarchError, match="not found"):
        Spectra.load(tmp_path / "missing.safetensors")
    torch.save({"w": torch.zeros(3)}, tmp_path / "model.pt")
    for name in ("model.pt", "s.safetensors.json"):
        with pytest.raises(EigenarchError, match="not a spectra file"):
            Spectra.load(tmp_path / name)


def _rewrite_header(path, change) -> None:
    """Rewrite the ``eigenarch-spectra`` header of ``path`` with ``change(fields)``."""
    with safetensors.safe_open(path, framework="pt") as f:
        info = json.loads(f.metadata()["eigenarch-spectra"])
        tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    change(info)
    metadata = {"eigenarch-spectra": json.dumps(info)}
    path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))


def test_an_edited_header_fails_its_sha256_check(spectra, tmp_path):
    path = spectra.save(tmp_path / "s.safetensors")
    sidecar(path).unlink()  # the tensor file alone: its header is checked by itself
    _rewrite_header(path, lambda info: info["maps"][0].update(samples=11))
    with pytest.raises(EigenarchError, match=r"s.safetensors: damaged spectra file \(fails"):
        Spectra.load(path)


def _edit(field: str, value):
    def edit(info: dict) -> None:
        *path, last = field.split(".")
        target = info
        for key in path:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value

    return edit


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("maps.0.samples", 11, "field 'maps[0].samples' is 11, but s.safetensors holds 10"),
        ("maps.0.channels", 7, "field 'maps[0].channels' is 7, but s.safetensors holds 5"),
        ("maps.1.name", "b:out", "field 'maps[1].name' is \"b:out\", but s.safetensors holds"),
        ("meta.model", "resnet50", "field 'meta.model' is \"resnet50\", but s.safetensors"),
        ("meta.seed", 3, "field 'meta.seed' is 3, but s.safetensors holds none"),
        ("maps.2.samples", KeyError, "field 'maps[2].samples' is missing, but s.safetensors"),
        ("maps.0.samples", 10.0, "field 'maps[0].samples' is 10.0, but s.safetensors holds 10"),
        ("meta", KeyError, "field 'meta' is missing, but s.safetensors holds {\"model\""),
    ],
)
def test_an_edited_sidecar_is_refused_naming_the_field(spectra, tmp_path, field, value, message):
    path = spectra.save(tmp_path / "s.safetensors")
    info = json.loads(sidecar(path).read_text())
    _edit(field, value)(info)
    sidecar(path).write_text(json.dumps(info, indent=2))
    with pytest.raises(EigenarchError) as error:
        Spectra.load(path)
    assert str(error.value).startswith(f"{sidecar(path)}: ") and message in str(error.value)
    assert str(error.value).endswith("(an edited sidecar?)")


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_format_is_refused_in_one_line(spectra, tmp_path, version):
    path = spectra.save(tmp_path / "s.safetensors")
    _rewrite_header(path, lambda info: info.update(version=version))
    with pytest.raises(EigenarchError, match=f"version {version}, expected 3 \\(an older eigen"):
        Spectra.load(path)


def test_the_same_spectra_give_byte_identical_files(spectra, tmp_path):
    # safetensors writes header metadata in a hash order that differs between saves
    spectra.meta = {"model": "toy", "data": "d", "split": "train", "seed": 0, "processes": 1}
    files = [spectra.save(tmp_path / f"s{i}.safetensors") for i in range(8)]
    for path in files[1:]:
        assert path.read_bytes() == files[0].read_bytes(), path
        assert sidecar(path).read_bytes() == sidecar(files[0]).read_bytes(), path


def test_decompose_runs_on_one_thread_and_restores_the_callers_count(spectra, monkeypatch):
    seen = []
    eigvalsh = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda m: seen.append(torch.get_num_threads())
                        or eigvalsh(m))  # fmt: skip
    torch.set_num_threads(2)
    ticks = []
    spectra.decompose(advance=lambda: ticks.append(torch.get_num_threads()))
    assert torch.get_num_threads() == 2 and seen == [1, 1, 1] and ticks == [1, 1, 1]
    spectra.eigenvalues("a:in")  # computed: no decomposition, no thread change
    assert seen == [1, 1, 1] and torch.get_num_threads() == 2


def test_failed_save_leaves_previous_file(spectra, tmp_path, monkeypatch):
    path = spectra.save(tmp_path / "s.safetensors")
    before = path.read_bytes()

    def broken(self, data):
        open(self, "wb").write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spectra_module.Path, "write_bytes", broken)
    with pytest.raises(EigenarchError) as info:
        spectra.save(path)
    assert (
        str(info.value)
        == f"{path}: cannot write (No space left on device); the previous file is intact"
    )
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors", "s.safetensors.json"]
    assert Spectra.load(path).names == spectra.names


def test_a_failure_between_the_two_writes_leaves_the_previous_pair(spectra, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    path = spectra.save(tmp_path / "s.safetensors")
    before = path.read_bytes(), sidecar(path).read_bytes()

    def full(self, *args, **kwargs):  # the tensor file is written; its sidecar is not
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spectra_module.Path, "write_text", full)
    spectra.meta = {"model": "another"}
    with pytest.raises(EigenarchError, match="s.safetensors.json: cannot write .* is intact$"):
        spectra.save(path)
    assert (path.read_bytes(), sidecar(path).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors", "s.safetensors.json"]
    assert Spectra.load(path).meta == {"model": "toy"}


def test_a_write_stopped_between_the_two_renames_loads_the_tensor_file(spectra, tmp_path):
    path = spectra.save(tmp_path / "s.safetensors")
    old_sidecar = sidecar(path).read_bytes()
    spectra.meta = {"model": "new"}
    spectra.save(path)
    new_sidecar = sidecar(path).read_bytes()
    sidecar(path).write_bytes(old_sidecar)  # the tensor file renamed, its sidecar not yet
    assert Spectra.load(path).meta == {"model": "new"}
    old = Spectra({"a:in": torch.eye(2, dtype=torch.float64)}, {"a:in": 1}, {"model": "old"}).save(
        tmp_path / "o.safetensors"
    )
    sidecar(old).write_bytes(new_sidecar)  # the sidecar renamed, its tensor file not yet
    assert Spectra.load(old).meta == {"model": "old"}
    sidecar(old).unlink()  # the tensor file copied alone
    assert Spectra.load(old).names == ["a:in"]


def test_a_header_declaring_huge_sizes_is_refused_without_allocating(tmp_path):
    import struct

    declared = tmp_path / "declared.safetensors"  # a 2 GiB header, in a 109-byte file
    declared.write_bytes(struct.pack("<Q", 2**31) + b"{" + b" " * 100)
    header = json.dumps({"covariance/a": {"dtype": "F64", "shape": [10**6, 10**6],
                                          "data_offsets": [0, 8 * 10**12]}}).encode()  # fmt: skip
    tensor = tmp_path / "tensor.safetensors"  # an 8 TB tensor, in a 200-byte file
    tensor.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 64)
    for path, reason in ((declared, "header too large"), (tensor, "not fully covered")):
        with pytest.raises(EigenarchError, match=f"{path.name}: damaged spectra file .*{reason}"):
            Spectra.load(path)
