"""Time per distillation step, D3S vs SRe2L, same teacher, batch and device, measured in one run.

Usage (repo root, inside the venv):  python benchmarks/synthesis_cost.py [--arch convnet3] [--size 32] [--batch 100]
Each method runs `distill()` for a short and a long number of iterations, interleaved and
repeated; the per-step time is the difference divided by the extra iterations (set-up cancels).
Also prints where D3S's extra time goes (covariance, Cholesky + KL) from a profile of its layer loss.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _fixtures import random_teacher, real_like_stats  # noqa: E402

from d3s.bn_inputs import BNInputRecorder  # noqa: E402
from d3s.distill import distill  # noqa: E402
from d3s.gaussian import feature_moments, gaussian_kl, gaussian_target  # noqa: E402
from d3s.hparams import DistillParams  # noqa: E402
from d3s.runtime import resolve_device  # noqa: E402
from d3s.shard import Shard  # noqa: E402


def run(method, teacher, stats, params, device) -> float:
    t0 = time.perf_counter()
    distill(
        [teacher],
        [stats] if method == "d3s" else None,
        "positions",
        Shard(0, params.batch_size // len(teacher.classes)),
        params,
        0,
        device,
        method=method,
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="convnet3")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    teacher = random_teacher(args.arch, size=args.size)
    teacher.model.to(device)
    stats = real_like_stats(teacher)
    short, long = 10, 40
    times = {m: [] for m in ("d3s", "sre2l")}
    for _ in range(args.repeats):
        for method in ("d3s", "sre2l"):
            t_short = run(method, teacher, stats, DistillParams(iterations=short, batch_size=args.batch), device)
            t_long = run(method, teacher, stats, DistillParams(iterations=long, batch_size=args.batch), device)
            times[method].append((t_long - t_short) / (long - short))
    d3s_ms, sre2l_ms = (1000 * statistics.median(times[m]) for m in ("d3s", "sre2l"))
    print(f"device {device}, {args.arch} at {args.size}px, batch {args.batch}, threads {torch.get_num_threads()}")
    print(f"d3s   step: {d3s_ms:7.1f} ms   (runs: {', '.join(f'{1000 * t:.1f}' for t in times['d3s'])})")
    print(f"sre2l step: {sre2l_ms:7.1f} ms   (runs: {', '.join(f'{1000 * t:.1f}' for t in times['sre2l'])})")
    print(f"ratio d3s / sre2l: {d3s_ms / sre2l_ms:.3f}")

    # Where D3S's extra time goes: the statistics terms alone, on the BN inputs of one forward pass.
    x = torch.randn(args.batch, teacher.channels, args.size, args.size, device=device, requires_grad=True)
    targets = [gaussian_target(s.mean.to(device), s.cov.to(device), 0.01) for s in stats]
    with BNInputRecorder(teacher.model) as rec:
        teacher.model(x)
        feats = list(rec.inputs)
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        moments = [feature_moments(f.float(), "positions") for f in feats]
    t_cov = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        for tgt, (m, c) in zip(targets, moments):
            gaussian_kl(tgt, m, c)
    t_kl = (time.perf_counter() - t0) / reps
    print(
        f"d3s extra per step (forward only): covariances {1000 * t_cov:.1f} ms, Cholesky + KL (float64) {1000 * t_kl:.1f} ms"
    )


if __name__ == "__main__":
    main()
