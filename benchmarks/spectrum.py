"""Speed and memory of the eigenspectrum collector (issue 3, section 6).

One run, the same inputs for every configuration: torchvision ResNet-50 (random weights,
eval, 224 x 224, batch 2) under ``torch.no_grad``:

* ``plain``      -- the forward alone;
* ``all maps``   -- with :class:`SpectrumCollector` on every conv / fc ``:in`` and ``:out`` map;
* ``all maps, products`` -- the same with ``derive=False``: every ``:out`` map multiplied,
  none derived from its ``:in`` map;
* ``outputs``    -- with the collector on ``:out`` maps only;
* ``delve``      -- with ``delve.SaturationTracker`` (conv + linear outputs, CPU), if installed;
* ``floor products`` -- not a forward: the products the ``all maps`` collector computes in
  one forward (their shapes and dtypes recorded once), as bare single-thread BLAS ``syrk``
  calls (:mod:`eigenarch.spectrum.blas`, the GIL released) spread over
  ``torch.get_num_threads()`` threads, torch's own (largest first, each to the least loaded
  thread; one parallel region).
  ``plain`` + this is the floor of the ``all maps`` configuration: what the collector would
  cost with nothing but its products.

Configurations are timed in turn, forward by forward, so that load from other processes hits
them alike; the median and the minimum over ``--repeats`` forwards of the wall-clock time and
of the process CPU time are reported (with ``--threads 1`` the CPU time is the work done,
whatever other processes load the machine). The time of the final ``spectra()`` call (where
derived maps get their ``W S W^T``) is reported per collector configuration, twice. The ratios
to the plain forward are reported with the floor's (``floor_all_maps_*``) and the distance to
it (``above_floor_*``, in plain forwards). Peak memory is
measured in fresh processes collecting ``--memory-images`` images each.

``--model fasterrcnn`` times the same three collector configurations on torchvision's Faster
R-CNN R50-FPN (random weights) at 800 px instead (no delve, no memory runs).

Usage: ``python benchmarks/spectrum.py [--repeats 20] [--threads N] [--memory-images 4,16,64]
[--memory-sizes 224,448] [--images 5000] [--model resnet50|fasterrcnn] [--json FILE]``
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, nullcontext
from functools import partial

import numpy as np
import torch
import torchvision
from threadpoolctl import threadpool_limits

from eigenarch.spectrum import SpectrumCollector, blas, collector, team

#: (channels, positions, dtype) of one product: ``+= F F^T`` for a (C, K) matrix ``F``.
Shape = tuple[int, int, torch.dtype]

BATCH, SIZE = 2, 224


def resnet50() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet50().eval()


def fasterrcnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None
    ).eval()


#: ``--model``: (builder, input). The detector gets one 480 x 640 image, which its transform
#: resizes to 800 x 1067 (the paper's scale); delve and the memory runs are ResNet-50 only.
MODELS = {
    "resnet50": (resnet50, lambda g: torch.randn(BATCH, 3, SIZE, SIZE, generator=g)),
    "fasterrcnn": (fasterrcnn, lambda g: [torch.rand(3, 480, 640, generator=g)]),
}


def delve_tracker(model: torch.nn.Module, folder: str):
    """delve's tracker on conv + linear outputs, or ``None`` (with the reason) if unavailable."""
    try:
        from delve import SaturationTracker
    except ImportError as exc:
        return None, f"delve not importable: {exc}"
    logging.getLogger("delve.logger").setLevel(logging.WARNING)  # it logs every layer it hooks
    tracker = SaturationTracker(f"{folder}/delve", save_to="csv", modules=model, device="cpu",
                                stats=["lsat"], include_conv=True)  # fmt: skip
    return tracker, None


def product_shapes(model: torch.nn.Module, x) -> list[Shape]:
    """The products one forward of ``model`` (inside its collector) computes."""
    shapes: list[Shape] = []
    original = collector._Triangle.add_grams

    def recording(self, terms: list[tuple[torch.Tensor, float]]) -> None:
        shapes.extend((matrix.shape[0], matrix.shape[1], self.dtype) for matrix, _ in terms)
        original(self, terms)

    collector._Triangle.add_grams = recording
    try:
        model(x)
    finally:
        collector._Triangle.add_grams = original
    return shapes


class BareProducts:
    """The floor of a collector: its products as bare single-thread ``syrk`` calls, the
    largest first, each to the least loaded of ``torch.get_num_threads()`` threads (torch's
    own, as the collector's: :func:`eigenarch.spectrum.team.side_by_side`)."""

    def __init__(self, shapes: list[Shape]) -> None:
        threads = torch.get_num_threads()
        self.bins: list[list] = [[] for _ in range(threads)]
        loads = [0.0] * threads
        rng = np.random.default_rng(0)
        outputs = {}
        for c, k, dtype in sorted(shapes, key=lambda s: -s[0] * s[0] * s[1]):
            factor = torch.from_numpy(rng.standard_normal((c, k))).to(dtype)
            out = outputs.setdefault((c, dtype), torch.zeros(c, c, dtype=dtype))
            i = loads.index(min(loads))
            loads[i] += c * c * k * (2 if dtype == torch.float64 else 1)
            self.bins[i].append((factor, out))
        #: Multiply-adds, the upper triangle only.
        self.macs = sum(c * c * k / 2 for c, k, _ in shapes)

    def run_bin(self, i: int) -> None:
        for factor, out in self.bins[i]:
            blas.syrk(out, factor, 1.0)

    def __call__(self, _=None) -> None:
        """One forward's products (call with single-thread BLAS)."""
        team.side_by_side([partial(self.run_bin, i) for i in range(len(self.bins))])


def timings(repeats: int, model_name: str = "resnet50", images: int | None = None) -> dict:
    build, make_input = MODELS[model_name]
    x = make_input(torch.Generator().manual_seed(0))
    base = build()
    collectors = {
        "all maps": {"images": images},
        "all maps, products": {"derive": False},
        "outputs": {"sides": ("out",)},
    }
    configs = {"plain": (base, nullcontext())}
    for name, kwargs in collectors.items():
        model = copy.deepcopy(base)
        configs[name] = (model, SpectrumCollector(model, **kwargs))
    tracker, delve_error = None, f"delve is timed on resnet50 only, not {model_name}"
    if model_name == "resnet50":
        delve_model = copy.deepcopy(base)
        tracker, delve_error = delve_tracker(delve_model, tempfile.mkdtemp())
    if tracker is not None:
        configs["delve"] = (delve_model, nullcontext())
    wall: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    with ExitStack() as stack, torch.no_grad():
        for model, context in configs.values():
            stack.enter_context(context)
            model(x)  # warm-up: buffers allocated, kernels chosen
            model(x)
        stack.enter_context(threadpool_limits(1, user_api="blas"))  # as in the collector
        shapes = product_shapes(configs["all maps"][0], x)
        bare = BareProducts(shapes)
        bare()
        configs["floor products"] = (bare, nullcontext())
        wall["floor products"], cpu["floor products"] = [], []
        for _ in range(repeats):
            for name, (model, _) in configs.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                model(x)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        reads: dict[str, list[float]] = {name: [] for name in collectors}
        for _ in range(2):  # the first read also pays for fresh memory
            for name in collectors:
                start = time.perf_counter()
                configs[name][1].spectra()
                reads[name].append(time.perf_counter() - start)
    result = {
        name: {
            "median_s": statistics.median(wall[name]),
            "min_s": min(wall[name]),
            "cpu_median_s": statistics.median(cpu[name]),
            "cpu_min_s": min(cpu[name]),
        }
        for name in configs
    }
    result["maps"] = {name: len(configs[name][1].names) for name in collectors}
    result["derived maps"] = {name: len(configs[name][1].derived) for name in collectors}
    float64 = sum(s[2] == torch.float64 for s in shapes)
    result["products per forward"] = {"count": len(shapes), "gmac": bare.macs / 1e9,
                                      "float64": float64}  # fmt: skip
    result["spectra() s"] = reads
    spectra = configs["all maps"][1].spectra()
    start = time.perf_counter()
    spectra.decompose()  # every map's eigenvalues (one thread, as Spectra does)
    result["decompose() s"] = time.perf_counter() - start
    if delve_error:
        result["delve_error"] = delve_error
    return result


def peak_memory(images: int, size: int = SIZE) -> dict:
    """Collect ``images`` images of ``size`` px (batches of 2, the collector told their number)
    in a fresh process with this one's threads: its peak RSS (VmHWM, which, unlike
    ``ru_maxrss``, does not carry over the parent's peak through fork and exec) and the
    wall-clock time of the forwards and of the final ``spectra()``."""
    code = (
        "import json, re, time, torch, torchvision\n"
        "from eigenarch.spectrum import SpectrumCollector\n"
        f"torch.set_num_threads({torch.get_num_threads()})\n"
        "torch.manual_seed(0); m = torchvision.models.resnet50().eval()\n"
        "g = torch.Generator().manual_seed(0)\n"
        "start = time.perf_counter()\n"
        f"with SpectrumCollector(m, images={images}) as c, torch.no_grad():\n"
        f"    for _ in range({images} // {BATCH}):\n"
        f"        m(torch.randn({BATCH}, 3, {size}, {size}, generator=g))\n"
        "    forwards = time.perf_counter() - start\n"
        "    s = c.spectra()\n"
        "total = time.perf_counter() - start\n"
        "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]\n"
        "print(json.dumps({'peak_rss_mib': int(hwm) / 1024, 'samples': s.samples('conv1:in'),"
        " 'forwards_s': forwards, 'total_s': total,"
        " 'state_mib': sum(12 * c.shape[0] ** 2 for c in map(s.covariance, s.names)) / 2**20}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--memory-images", default="4,16,64")
    parser.add_argument("--memory-sizes", default=str(SIZE), help="image sizes of those runs")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet50")
    parser.add_argument("--images", type=int, default=5000,
                        help="the images the collector is told it streams (its derive rule; "
                        "`eigenarch spectrum`'s default --images); 0: not told")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "model": args.model}
    result["images"] = args.images or None
    result["time"] = timings(args.repeats, args.model, args.images or None)
    t = result["time"]
    for stat in ("median_s", "min_s", "cpu_median_s", "cpu_min_s"):
        plain = t["plain"][stat]
        result[f"ratio_all_maps_{stat[:-2]}"] = t["all maps"][stat] / plain
        floor = 1 + t["floor products"][stat] / plain
        result[f"floor_all_maps_{stat[:-2]}"] = floor
        result[f"above_floor_{stat[:-2]}"] = t["all maps"][stat] / plain - floor
        result[f"ratio_all_maps_products_{stat[:-2]}"] = t["all maps, products"][stat] / plain
        if "delve" in t:
            result[f"added_vs_delve_{stat[:-2]}"] = (t["outputs"][stat] - plain) / (
                t["delve"][stat] - plain
            )
    if args.model == "resnet50" and args.memory_images:
        result["memory"] = {
            f"{n} images, {size} px": peak_memory(int(n), int(size))
            for size in args.memory_sizes.split(",")
            for n in args.memory_images.split(",")
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
