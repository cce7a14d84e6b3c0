"""What denormal floats cost on this CPU, and what `flush_denormal` buys back.

1. A projector-sized `Linear(3200, 256)` over 384 rows, with normal weights and with weights in
   the denormal range (below 1.2e-38, as weights that only weight decay moves end up), timed with
   the CPU's flush mode off and on (`rllib_barlowzero.torch.networks.flush_denormals`).
2. With `--checkpoint`: how many weights and optimizer-state entries of a saved algorithm are
   denormal (the evidence that training produces them).

Prints its figures and writes `benchmarks/results/bench_denormal.json`.
Run: python benchmarks/bench_denormal.py [--checkpoint DIR] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rllib_barlowzero.torch.networks import flush_denormals

ROOT = Path(__file__).resolve().parents[1]
SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)


def time_forward(weight_scale: float, flush: bool, repeats: int) -> float:
    """Median milliseconds of one `Linear(3200, 256)` forward over 384 rows."""
    flush_denormals(flush)
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(3200, 256)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(256, 3200, generator=generator) * weight_scale)
    x = torch.rand(384, 3200, generator=generator)
    times = []
    with torch.no_grad():
        layer(x)
        for _ in range(repeats):
            start = time.perf_counter()
            layer(x)
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def count_denormals(obj: Any, prefix: str, out: dict[str, tuple[int, int]]) -> None:
    """Adds `name -> (denormal entries, entries)` for each float32 array or tensor in `obj`."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            count_denormals(value, f"{prefix}/{key}", out)
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            count_denormals(value, f"{prefix}[{i}]", out)
    else:
        if isinstance(obj, torch.Tensor):
            obj = obj.detach().cpu().numpy()
        if isinstance(obj, np.ndarray) and obj.dtype == np.float32:
            magnitude = np.abs(obj)
            denormal = int(((magnitude > 0) & (magnitude < SMALLEST_NORMAL)).sum())
            if denormal:
                out[prefix] = (denormal, int(obj.size))


def scan_checkpoint(checkpoint: Path) -> dict[str, Any]:
    learner = checkpoint / "learner_group" / "learner"
    files = {"weights": next(learner.glob("rl_module/*/module_state.pkl")),
             "optimizer": learner / "state.pkl"}
    report: dict[str, Any] = {"checkpoint": str(checkpoint)}
    for part, path in files.items():
        with open(path, "rb") as f:
            state = pickle.load(f)
        if part == "optimizer":
            state = state["optimizer"]
        found: dict[str, tuple[int, int]] = {}
        count_denormals(state, "", found)
        report[part] = {
            "tensors_with_denormals": len(found),
            "denormal_entries": sum(d for d, _ in found.values()),
            "largest": sorted(([name, d, n] for name, (d, n) in found.items()),
                              key=lambda row: -row[1])[:8],
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, action="append", default=[],
                        help="a saved algorithm to scan (repeatable)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    timings = {}
    for weights, scale in (("normal", 0.02), ("denormal", 1e-40)):
        for flush in (False, True):
            ms = time_forward(scale, flush, args.repeats)
            timings[f"{weights}_weights_flush_{'on' if flush else 'off'}_ms"] = round(ms, 2)
            print(f"Linear(3200, 256) x 384 rows, {weights} weights, flush "
                  f"{'on ' if flush else 'off'}: {ms:8.2f} ms")
    slowdown = timings["denormal_weights_flush_off_ms"] / timings["normal_weights_flush_off_ms"]
    fixed = timings["denormal_weights_flush_on_ms"] / timings["normal_weights_flush_off_ms"]
    print(f"denormal weights: x{slowdown:.0f} the normal time with flush off, x{fixed:.2f} on")
    record: dict[str, Any] = {"threads": 1, "repeats": args.repeats, **timings,
                              "denormal_slowdown_flush_off": round(slowdown, 1),
                              "denormal_slowdown_flush_on": round(fixed, 2),
                              "checkpoints": []}
    flush_denormals(False)  # with it on, the scan's own comparisons would read denormals as 0
    for checkpoint in args.checkpoint:
        report = scan_checkpoint(checkpoint)
        record["checkpoints"].append(report)
        for part in ("weights", "optimizer"):
            print(f"{checkpoint}: {part}: {report[part]['denormal_entries']} denormal entries in "
                  f"{report[part]['tensors_with_denormals']} tensors")
    out = ROOT / "benchmarks" / "results" / "bench_denormal.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
