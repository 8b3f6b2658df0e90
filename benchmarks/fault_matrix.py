"""Kill matrix: kill -9, SIGINT and SIGTERM during every long command, then the rerun.

For each command (on the tiny synthetic data) the script makes an uninterrupted reference
run, then, per signal, runs it again in the same folder, sends the signal part-way (when a
file appears, 0.3 s later, or half-way through the reference's time after start-up), and
checks:

- the message: SIGINT (to the process group, as Ctrl-C does) ends in ``interrupted``, exit
  130; SIGTERM (to the command's process) in ``terminated``, exit 143; no traceback;
- that no process of the command's group survives it (loader and demo workers included);
- the temporary files (``.*.tmp``) left in the output right after the kill, and after the rerun;
- that the rerun (``--resume`` where the command has one) ends with exactly the reference's
  files: every file byte for byte, or, for the few that log wall-clock times, equal once
  their time fields (and checkpoint mtimes) are left out; checkpoints (``torch.save``
  writes a random serialization id into each) and spectra files (whose header copies that
  meta) equal in every tensor and value; SVG figures once matplotlib's date and random
  element ids are left out.

    python benchmarks/fault_matrix.py [--only train,spectrum] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from eigenarch.data.shapes import (
    ShapesClsConfig,
    ShapesConfig,
    generate_shapes,
    generate_shapes_cls,
)
from eigenarch.spectrum import Spectra

TINY = [
    "--backbone",
    "16,16,32,16,32,32,64,32,64",
    "--gn-groups",
    "8",
    "--fpn-channels",
    "32",
    "--head-channels",
    "32",
    "--representation",
    "64",
    "--min-size",
    "128",
    "--max-size",
    "128",
    "--anchor-sizes",
    "16,32,64,128,256",
    "--roi-batch",
    "64",
    "--rpn-batch",
    "64",
]
SPACE = ["--stem", "8", "--channels", "16,32,48,64", "--depths", "1,1,2,1"]
NAS_DETECTOR = [
    "--gn-groups",
    "8",
    "--fpn-channels",
    "16",
    "--head-channels",
    "16",
    "--representation",
    "32",
    "--min-size",
    "96",
    "--max-size",
    "96",
    "--anchor-sizes",
    "16,32,64,128,256",
    "--roi-batch",
    "32",
    "--rpn-batch",
    "32",
    "--batch-size",
    "2",
    "--lr",
    "0.01",
]
SEARCH = ["--population", "4", "--topk", "2", "--mutations", "1", "--crossovers", "1",
          "--generations", "8", "--bn-images", "2", "--flops", "14M"]  # fmt: skip
#: JSON fields that hold wall-clock times, left out of the comparison (and the digest of a
#: spectra file, which holds a checkpoint's mtime: the spectra are compared by value).
TIMES = {"time", "seconds", "elapsed", "images_per_second", "mtime_ns", "tensors_sha256"}
SIGNALS = {"kill -9": signal.SIGKILL, "SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}
EXPECTED = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}


@dataclass
class Case:
    """A command: its first run and its rerun (argv after ``eigenarch``) in folder ``out``,
    the file whose appearance is the kill point (else a fraction of the reference time)."""

    name: str
    first: Callable[[Path], list[str]]
    rerun: Callable[[Path], list[str]]
    kill_at: str | None = None
    prepare: Callable[[Path], None] = field(default=lambda out: None)


def cases(data: Path, cls: Path, refs: Path) -> list[Case]:
    def resume_if(marker: str, first, resume):
        return lambda out: resume(out) if list(out.glob(marker)) else first(out)

    train = lambda out: ["train", "--data", data, "--out", out, *TINY, "--iters", "12",  # noqa: E731
                         "--checkpoint-every", "3", "--workers", "2"]  # fmt: skip
    pretrain = lambda out: ["pretrain", "--data", cls, "--out", out / "p.pt", "--backbone",  # noqa: E731
                            TINY[1], "--gn-groups", "8", "--size", "32", "--epochs", "4",
                            "--batch-size", "4", "--workers", "2"]  # fmt: skip
    spectrum = lambda out: ["spectrum", "--model", "resnet50", "--data", data, "--images", "48",  # noqa: E731
                            "--batch-size", "1", "--workers", "2", "--out",
                            out / "s.safetensors"]  # fmt: skip
    dynamics = lambda out: ["dynamics", "--run", out, "--images", "4", "--workers", "2"]  # noqa: E731
    supernet = lambda out: ["detnas", "supernet", "--data", data, "--out", out, *SPACE,  # noqa: E731
                            *NAS_DETECTOR, "--iters", "40", "--checkpoint-every", "10",
                            "--workers", "2"]  # fmt: skip
    checkpoint = refs / "detnas supernet" / "checkpoints" / "iter_0000040.pt"
    search = lambda out: ["detnas", "search", "--supernet", checkpoint, "--data", data,  # noqa: E731
                          "--out", out, *SEARCH]  # fmt: skip
    demo = lambda out: ["demo", "--quick", "--scale", "0.5", "--jobs", "2", "--out", out]  # noqa: E731

    def copy_run(out: Path) -> None:
        shutil.copytree(refs / "train", out)

    return [
        Case("train", train, resume_if("checkpoints/iter_*.pt", train,
                                       lambda out: ["train", "--out", out, "--resume"]),
             "checkpoints/iter_0000006.pt"),
        Case("pretrain", pretrain, resume_if("p.pt.resume", pretrain,
                                             lambda out: [*pretrain(out), "--resume"]),
             "p.pt.resume"),
        Case("spectrum", spectrum, spectrum),
        Case("dynamics", dynamics, dynamics, "spectra/iter_0000003.safetensors", copy_run),
        Case("detnas supernet", supernet, resume_if("checkpoints/iter_*.pt", supernet,
                                                    lambda out: [*supernet(out), "--resume"]),
             "checkpoints/iter_0000020.pt"),
        Case("detnas search", search, resume_if("search.json", search,
                                                lambda out: [*search(out), "--resume"])),
        Case("demo", demo, demo),
    ]  # fmt: skip


def launch(argv: list, log: Path) -> tuple[subprocess.Popen, list[str]]:
    """``eigenarch ARGV`` in a session of its own; its stderr collected as it comes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
    command = [sys.executable, "-m", "eigenarch", *map(str, argv)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, env=env)  # fmt: skip
    lines: list[str] = []

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
        log.write_text("".join(lines))

    threading.Thread(target=read, daemon=True).start()
    return process, lines


def run(argv: list, log: Path) -> tuple[int, str, float]:
    start = time.perf_counter()
    process, lines = launch(argv, log)
    code = process.wait()
    time.sleep(0.2)  # the reader's last lines
    return code, "".join(lines), time.perf_counter() - start


def startup_time() -> float:
    """Seconds Python takes to import the CLI now (before it, a signal meets Python's
    default handling: the command has not started)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import eigenarch.cli.app"], check=True)
    return time.perf_counter() - start


def survivors(group: int) -> list[int]:
    """Live (not zombie) processes of the process group ``group``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            found.append(int(stat.parent.name))
    return found


def temps(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*.tmp")) if out.exists() else []


def _strip_times(value):
    if isinstance(value, dict):
        return {k: _strip_times(v) for k, v in value.items() if k not in TIMES}
    if isinstance(value, list):
        return [_strip_times(v) for v in value]
    return value


def _json(path: Path):
    text = path.read_text()
    try:
        return _strip_times(json.loads(text))
    except json.JSONDecodeError:  # JSON lines
        return [_strip_times(json.loads(line)) for line in text.splitlines() if line.strip()]


def compare(ref: Path, out: Path) -> str:
    """``bit-exact``, ``equal (times aside)`` or what differs first."""
    skip = {".lock"}
    names = {str(p.relative_to(ref)) for p in ref.rglob("*") if p.is_file() and p.name not in skip}
    got = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name not in skip}
    if names != got:
        return f"DIFF files: missing {sorted(names - got)[:2]}, extra {sorted(got - names)[:2]}"
    loose = []
    for name in sorted(names):
        a, b = (ref / name).read_bytes(), (out / name).read_bytes()
        if a == b:
            continue
        if name.endswith((".json", ".jsonl")) and _json(ref / name) == _json(out / name):
            loose.append(name)
            continue
        if name.endswith(".pt") and _same(_load(ref / name), _load(out / name)):
            loose.append(name)  # torch.save writes a random serialization_id into each file
            continue
        if name.endswith(".safetensors") and _same(*map(_spectra, (ref / name, out / name))):
            loose.append(name)  # its header's copy of the meta holds a checkpoint's mtime
            continue
        if name.endswith(".svg") and _svg(ref / name) == _svg(out / name):
            loose.append(name)  # matplotlib writes the date and random element ids
            continue
        return f"DIFF {name}"
    return f"equal ({len(loose)} file(s) equal in value, not bytes)" if loose else "bit-exact"


def _spectra(path: Path) -> dict:
    spectra = Spectra.load(path)
    maps = {n: (spectra.covariance(n), spectra.eigenvalues(n), spectra.samples(n))
            for n in spectra.names}  # fmt: skip
    return {"maps": maps, "meta": _strip_times(spectra.meta)}


def _svg(path: Path) -> str:
    text = re.sub(r"<dc:date>[^<]*</dc:date>", "", path.read_text())
    return re.sub(r'(id="|url\(#|href="#)[A-Za-z0-9_]+', r"\1ID", text)


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _same(a, b) -> bool:
    """Equal values: every tensor ``torch.equal`` (dtype and shape too), all else ``==``."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    return type(a) is type(b) and a == b


def trial(case: Case, sig: signal.Signals, out: Path, ref: Path, wall: float, kill: float,
          logs: Path):  # fmt: skip
    """One kill (when ``case.kill_at`` appears, else ``kill`` seconds in) and the rerun;
    returns a row of the table."""
    case.prepare(out)
    tag = f"{case.name.replace(' ', '-')}-{sig.name}"
    process, lines = launch(case.first(out), logs / f"{tag}-killed.log")
    start, deadline = time.perf_counter(), time.perf_counter() + 20 * wall + 60
    while process.poll() is None and time.perf_counter() < deadline:
        hit = list(out.glob(case.kill_at)) if case.kill_at else []
        if hit or (case.kill_at is None and time.perf_counter() - start > kill):
            time.sleep(0.3 if hit else 0)  # not at the very moment the file appears
            break
        time.sleep(0.05)
    if process.poll() is not None:
        return [case.name, sig.name, "finished before the kill", "", "", "", "", ""]
    killed_at = time.perf_counter() - start
    os.killpg(process.pid, sig) if sig == signal.SIGINT else process.send_signal(sig)
    code = process.wait(timeout=600)
    time.sleep(0.3)
    stderr = "".join(lines)
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    want = EXPECTED.get(sig)
    message = ("-" if want is None else
               "ok" if (code, last) == want and "Traceback" not in stderr
               else f"BAD rc={code} {last[:40]!r}")  # fmt: skip
    deadline = time.monotonic() + 15
    while survivors(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = len(survivors(process.pid))
    left = len(temps(out))
    code, rerun_err, _ = run(case.rerun(out), logs / f"{tag}-rerun.log")
    result = compare(ref, out) if code == 0 else f"rerun failed: {rerun_err.strip()[-80:]!r}"
    return [
        case.name,
        sig.name,
        f"{killed_at:.1f} s",
        message,
        str(alive),
        str(left),
        str(len(temps(out))),
        result,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="Comma-separated command names.")
    parser.add_argument("--keep", type=Path, help="Work folder to keep (default: temporary).")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    work.mkdir(parents=True, exist_ok=True)
    data, cls, refs, logs = work / "data", work / "cls", work / "refs", work / "logs"
    logs.mkdir(exist_ok=True)
    if not data.exists():
        generate_shapes(data, ShapesConfig(train=12, val=6, size=128, seed=0), workers=1)
        generate_shapes_cls(cls, ShapesClsConfig(4, 1, size=32), workers=1)
    chosen = [c for c in cases(data, cls, refs) if not args.only or c.name in args.only.split(",")]
    rows = []
    for case in chosen:
        ref, out = refs / case.name, work / "out" / case.name
        shutil.rmtree(ref, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        case.prepare(out)
        code, stderr, wall = run(case.first(out), logs / f"{case.name.replace(' ', '-')}-ref.log")
        if code != 0:
            raise SystemExit(f"{case.name}: reference run failed:\n{stderr[-2000:]}")
        ref.parent.mkdir(parents=True, exist_ok=True)
        out.rename(ref)
        startup = startup_time()
        kill = startup + 0.5 * max(wall - startup, 0)
        print(f"{case.name}: reference {wall:.1f} s, start-up {startup:.1f} s", flush=True)
        for sig in SIGNALS.values():
            row = trial(case, sig, out, ref, wall, kill, logs)
            rows.append(row)
            print(" | ".join(row), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    header = ["command", "signal", "killed after", "message", "survivors", ".tmp after kill",
              ".tmp after rerun", "rerun vs uninterrupted"]  # fmt: skip
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}\n")  # fmt: skip
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
