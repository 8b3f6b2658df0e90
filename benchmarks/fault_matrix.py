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

With ``--faults`` it runs the second matrix instead (issues 25 and 27; root, for tmpfs
mounts): each command against a read-only or full file system, a symbolic link loop, hostile
files (huge sizes, NaN boxes, paths out of the data folder, a pickle that runs code) and a
rank killed or stopped under ``torchrun``; per case the exit status, the last line, whether
a traceback of ours was printed, the seconds and peak memory it took, and whether the files
already in the folder were left exactly as they were.

    python benchmarks/fault_matrix.py --faults [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
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


def measured(argv: list, env: dict | None = None) -> tuple[int, str, float, float]:
    """``(exit status, stderr, seconds, peak resident GB)`` of ``ARGV`` (``eigenarch`` argv,
    or a full command line starting with the Python executable)."""
    command = argv if argv and argv[0] == sys.executable else [sys.executable, "-m",
                                                                "eigenarch", *argv]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120", **(env or {})}
    start = time.perf_counter()
    process = subprocess.Popen(list(map(str, command)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, stderr, time.perf_counter() - start, usage.ru_maxrss / 2**20


def mount(folder: Path, kilobytes: int, read_only: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kilobytes}k", "tmpfs", str(folder)],
                   check=True)  # fmt: skip
    return folder


def snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != "filler"}


def fill(folder: Path, leave: int) -> None:
    stat = os.statvfs(folder)
    with open(folder / "filler", "wb") as f:
        f.write(b"\0" * max(stat.f_bavail * stat.f_frsize - leave, 0))


def fault_rows(work: Path, data: Path, cls: Path) -> list[list[str]]:
    """Every case of the second matrix, run; one table row each."""
    train = ["train", "--data", data, *TINY, "--iters", "2", "--checkpoint-every", "1",
             "--workers", "0"]  # fmt: skip
    run = work / "refs-run"
    if not run.exists():
        assert measured([*train[:3], "--out", run, *train[3:]])[0] == 0
        assert measured(["dynamics", "--run", run, "--images", "2", "--workers", "0"])[0] == 0
    rows = []

    def case(name: str, argv: list, keep: Path | None = None, env: dict | None = None) -> None:
        before = snapshot(keep) if keep is not None else None
        code, stderr, seconds, peak = measured(argv, env)
        ours = [line for line in stderr.splitlines() if line.startswith("error: ")]
        last = (ours or stderr.strip().splitlines() or [""])[-1]
        trace = "yes" if re.search(r'File ".*/eigenarch/', stderr) else "no"
        after = snapshot(keep) if keep is not None else {}
        kept = "-" if before is None else "yes" if all(after.get(p) == b for p, b in
                                                       before.items()) else "NO"  # fmt: skip
        last = re.sub(re.escape(str(work)) + "/?", "", last)[:150].replace("|", "\\|")
        rows.append([name, str(code), f"`{last}`", trace, f"{seconds:.1f} s", f"{peak:.2f}",
                     kept])  # fmt: skip
        print(" | ".join(rows[-1]), flush=True)

    # a read-only file system
    ro = mount(work / "ro", 64 * 1024)
    shutil.copytree(run, ro / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    case("read-only: train", [*train[:3], "--out", ro / "new", *train[3:]], ro / "run")
    case("read-only: train --resume", ["train", "--out", ro / "run", "--resume"], ro / "run")
    case("read-only: demo", ["demo", "--quick", "--out", ro / "demo"], ro / "run")
    case("read-only: dynamics", ["dynamics", "--run", ro / "run", "--images", "1",
                                 "--workers", "0"], ro / "run")  # fmt: skip
    case("read-only: evaluate", ["evaluate", "--run", ro / "run"], ro / "run")
    # a full disk
    small = mount(work / "small", 3 * 1024)
    case("3 MB disk: train", [*train[:3], "--out", small / "run", *train[3:]])
    case("3 MB disk: pretrain", ["pretrain", "--data", cls, "--out", small / "p.pt", "--backbone",
                                 TINY[1], "--gn-groups", "8", "--size", "32", "--epochs", "2",
                                 "--workers", "0"], small)  # fmt: skip
    case("3 MB disk: demo", ["demo", "--quick", "--out", small / "demo"])
    full = mount(work / "full", 64 * 1024)
    shutil.copytree(run, full / "run")
    spectrum = ["spectrum", "--model", "resnet18", "--data", data, "--images", "2",
                "--workers", "0", "--out", full / "s.safetensors"]  # fmt: skip
    assert measured(spectrum)[0] == 0
    fill(full, 60_000)
    case("full disk: spectrum (over an earlier one)", [*spectrum, "--seed", "1", "--force"], full)
    case("full disk: dynamics (new spectra)", ["dynamics", "--run", full / "run", "--images",
                                               "1", "--workers", "0"], full)  # fmt: skip
    case("full disk: report", ["report", full / "run", "--out", full / "report"], full)
    # a symbolic link loop
    loop = work / "loop"
    if not loop.is_symlink():
        loop.symlink_to(work / "loop2")
        (work / "loop2").symlink_to(loop)
    case("link loop: train --out", [*train[:3], "--out", loop / "run", *train[3:]])
    case("link loop: demo --out", ["demo", "--quick", "--out", loop])
    # hostile files
    spec = work / "deep.json"
    spec.write_text(json.dumps({"widths": [64, 64, 256, 128, 512, 256, 1024, 512, 2048],
                                "depths": [3, 4, 6, 1000000]}))  # fmt: skip
    case("width spec: depths 3,4,6,1000000 (count)", ["count", "--spec", spec])
    spec = work / "wide.json"
    spec.write_text(json.dumps({"widths": [64, 64, 256, 128, 512, 256, 1024, 512, 10**9]}))
    case("width spec: a width of 10^9 (train)", [*train[:3], "--out", work / "w",
                                                  "--backbone", spec, *train[5:]])  # fmt: skip
    hostile = {
        "a million boxes in one image": lambda d: d["annotations"].extend(
            {**d["annotations"][0], "id": 10**7 + k} for k in range(10**6)),
        "a declared image of 20000x20000": lambda d: d["images"][0].update(width=20000,
                                                                            height=20000),
        "a NaN box": lambda d: d["annotations"][0]["bbox"].__setitem__(0, float("nan")),
        "file_name ../x.jpg": lambda d: d["images"][0].update(file_name="../x.jpg"),
        "file_name an absolute path": lambda d: d["images"][0].update(
            file_name=str(data / "val" / d["images"][0]["file_name"])),
    }  # fmt: skip
    for name, change in hostile.items():
        bad = work / "bad"
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(data, bad)
        # edited in a child process: this one stays small, and so do the commands it forks
        editor = multiprocessing.get_context("fork").Process(target=_edit, args=(bad, change))
        editor.start()
        editor.join()
        case(f"data: {name} (train)", ["train", "--data", bad, *train[3:], "--out", work / "h"])
        shutil.rmtree(work / "h", ignore_errors=True)
    evil = work / "evil.pt"
    subprocess.run([sys.executable, "-c", "import os, torch\nclass E:\n def __reduce__(self): "
                    f"return (os.system, ('touch {work}/ran',))\ntorch.save({{'model': E()}}, "
                    f"'{evil}')"], check=True)  # fmt: skip
    case("a checkpoint whose pickle runs os.system (evaluate)", ["evaluate", "--checkpoint", evil,
                                                                 "--data", data])  # fmt: skip
    assert not (work / "ran").exists()
    # a lost rank under torchrun
    for how, sig in (("kill -9", signal.SIGKILL), ("SIGSTOP", signal.SIGSTOP)):
        rows.append(lost_rank(work, data, how, sig))
        print(" | ".join(rows[-1]), flush=True)
    return rows


def _edit(root: Path, change: Callable[[dict], object]) -> None:
    for split in ("train", "val"):
        path = root / "annotations" / f"instances_{split}.json"
        obj = json.loads(path.read_text())
        change(obj)
        path.write_text(json.dumps(obj))


def lost_rank(work: Path, data: Path, how: str, sig: signal.Signals) -> list[str]:
    """torchrun, 2 gloo ranks training; rank 1 gets ``sig`` once iteration 4 is saved."""
    out = work / f"ddp-{sig.name}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m",
               "eigenarch", "--collective-timeout", "20", "train", "--data", data, "--out", out,
               *TINY, "--iters", "30", "--batch-size", "2", "--checkpoint-every", "2",
               "--workers", "0"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(list(map(str, command)), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)  # fmt: skip
    while not (out / "checkpoints" / "iter_0000004.pt").exists() and launcher.poll() is None:
        time.sleep(0.1)
    victim = next(int(p.name) for p in Path("/proc").glob("[0-9]*")
                  if _worker_of(p, launcher.pid, b"RANK=1"))  # fmt: skip
    start = time.perf_counter()
    os.kill(victim, sig)
    stderr = launcher.communicate(timeout=600)[1]
    ours = [line for line in stderr.splitlines() if line.startswith("error: ")]
    ended = time.perf_counter() - start
    if sig == signal.SIGSTOP:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    trace = "yes" if re.search(r'File ".*/eigenarch/', stderr) else "no"
    last = (ours or [""])[-1][:150].replace("|", "\\|")
    return [f"torchrun: rank 1 {how} at iter 4", str(launcher.returncode), f"`{last}`", trace,
            f"{ended:.1f} s to end", "-", "-"]  # fmt: skip


def _worker_of(proc: Path, parent: int, marker: bytes) -> bool:
    try:
        ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        return ppid == parent and marker in (proc / "environ").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="Comma-separated command names.")
    parser.add_argument("--keep", type=Path, help="Work folder to keep (default: temporary).")
    parser.add_argument("--faults", action="store_true", help="The second matrix (root).")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    work.mkdir(parents=True, exist_ok=True)
    data, cls, refs, logs = work / "data", work / "cls", work / "refs", work / "logs"
    logs.mkdir(exist_ok=True)
    if not data.exists():
        generate_shapes(data, ShapesConfig(train=12, val=6, size=128, seed=0), workers=1)
        generate_shapes_cls(cls, ShapesClsConfig(4, 1, size=32), workers=1)
    if args.faults:
        try:
            rows = fault_rows(work, data, cls)
        finally:
            for name in ("ro", "small", "full"):
                subprocess.run(["umount", "-l", str(work / name)], capture_output=True)
        header = ["case", "exit", "last line", "traceback of ours", "time", "peak GB",
                  "earlier files kept"]  # fmt: skip
        print(f"\n{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{time.strftime('%Y-%m-%d')}\n")  # fmt: skip
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
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
