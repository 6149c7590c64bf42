#!/usr/bin/env python3
"""Where a training step's CPU time goes, by Burn operation, forward and backward.

Reads `perf script` text of `train step-time` recorded with call graphs (ci/profile-step.sh) and
prints a markdown table: CPU milliseconds per step (all threads) for each operation, split into
forward (including the loss), backward and the Adam update. A sample is labelled by the main
thread's stack (the innermost `Autodiff::<op>` frame: the operation, or its backward when the
autodiff server is running); samples of the worker threads take the label of the main thread's
latest sample, since the workers only run the parallel parts of the main thread's current
operation. Samples outside the timed steps (setup, warm-up) are left out.

    python3 ci/profile_step.py perf.txt --steps 8 --hz 499
"""

import argparse
import re
from collections import defaultdict

OP = re.compile(r"for burn_autodiff::backend::Autodiff<B,C>>::(\w+)")
HEADER = re.compile(r"^\S+\s+(\d+)\s+([\d.]+):")

# The networks' own operations (crates/models/src/cpu/), not Autodiff's: frame
# marker and label.
OWN = {
    "relkd_models::cpu::conv::": "conv2d",
    "relkd_models::cpu::batch_norm::": "batch_norm_train",
    "relkd_models::cpu::prelu::": "prelu",
}

# What each Burn operation is in relkd's networks (the ones that cost something).
MEANING = {
    "conv2d": "convolution",
    "conv_transpose2d": "transposed convolution",
    "batch_norm_train": "batch norm",
    "float_mask_where": "PReLU as Burn computes it (mask_where)",
    "float_lower_elem": "PReLU as Burn computes it (mask)",
    "float_neg": "negate (PReLU)",
    "float_sub": "subtract (PReLU, batch norm)",
    "float_mul": "multiply (PReLU slope, dropout, Adam)",
    "float_random": "dropout mask",
    "float_scatter": "max-unpool (scatter)",
    "max_pool2d_with_indices": "max-pool with indices",
    "float_add": "add (residuals)",
    "float_matmul": "matmul (bilinear resize)",
    "float_cat": "concatenate",
    "relu": "ReLU",
    "prelu": "PReLU (relkd's, one operation)",
}


def samples(lines):
    """(tid, time, frames) per sample; frames innermost first."""
    tid, when, frames = None, None, []
    for line in lines:
        header = HEADER.match(line)
        if header:
            tid, when, frames = int(header.group(1)), float(header.group(2)), []
        elif line.strip():
            frames.append(line.strip())
        elif tid is not None:
            yield tid, when, frames
            tid = None
    if tid is not None:
        yield tid, when, frames


def label(frames):
    """(phase, op) of a main-thread stack, or None outside the timed steps."""
    stack = "\n".join(frames)
    # Deep forward stacks are cut before the step's frames; setup has the step function's frame
    # without the timed closure's.
    if "time_training_step" in stack and "time_runs" not in stack:
        return None
    if "AutodiffServer::backward" in stack:
        phase = "backward"
    elif "burn_optim" in stack:
        return ("adam", "Adam update")
    else:
        phase = "forward"
    for frame in frames:
        match = OP.search(frame)
        if match:
            return (phase, match.group(1))
        own = next((op for marker, op in OWN.items() if marker in frame), None)
        if own:
            return (phase, own)
    return (phase, "other")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("perf_script")
    parser.add_argument("--steps", type=int, required=True, help="steps in the recording, warm-up included")
    parser.add_argument("--hz", type=float, required=True, help="perf record's sampling frequency")
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    with open(args.perf_script, errors="replace") as f:
        all_samples = list(samples(f))
    # The main thread's id is the process id, the lowest of its threads'.
    main_tid = min(tid for tid, _, _ in all_samples)
    totals = defaultdict(float)
    current = None
    for tid, _, frames in sorted(all_samples, key=lambda s: s[1]):
        if tid == main_tid:
            current = label(frames)
        if current is None:
            continue
        # relkd's own operations wait for the pool on the main thread: their work shows on the workers.
        own = next((op for marker, op in OWN.items() if tid != main_tid and any(marker in f for f in frames)), None)
        totals[(current[0], own) if own else current] += 1
    ms = 1e3 / args.hz / args.steps
    ops = sorted({op for _, op in totals}, key=lambda op: -sum(v for (p, o), v in totals.items() if o == op))
    whole = sum(totals.values()) * ms
    print(f"| {args.title or 'operation'} | forward ms | backward ms | share |")
    print("|---|---|---|---|")
    for op in ops:
        fwd = totals.get(("forward", op), 0) * ms
        bwd = totals.get(("backward", op), 0) * ms
        adam = totals.get(("adam", op), 0) * ms
        share = (fwd + bwd + adam) / whole
        if share < 0.01:
            continue
        name = MEANING.get(op, op)
        cells = (f"{adam:.0f} (Adam)", "–") if op == "Adam update" else (f"{fwd:.0f}", f"{bwd:.0f}")
        print(f"| {name} | {cells[0]} | {cells[1]} | {100 * share:.0f}% |")
    fwd_all = sum(v for (p, _), v in totals.items() if p == "forward") * ms
    bwd_all = sum(v for (p, _), v in totals.items() if p == "backward") * ms
    print(f"| **all** (CPU ms per step, both threads) | {fwd_all:.0f} | {bwd_all:.0f} | {whole:.0f} ms |")


if __name__ == "__main__":
    main()
