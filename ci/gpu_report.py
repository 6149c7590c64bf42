#!/usr/bin/env python3
"""Writes OUT/gpu-report.md from what ci/gpu-device.sh left in OUT (results/NAME.*, machine.txt).

    python3 ci/gpu_report.py OUT [--cpu-quick-seconds S]
"""

import argparse
import json
import re
from pathlib import Path

ARCHS = [("espnet", "ESPNet"), ("enet", "ENet"), ("erfnet", "ERFNet"), ("unetpp", "UNet++"), ("deeplabv3plus", "DeepLabV3+")]


def read(path, default=""):
    try:
        return path.read_text().strip()
    except OSError:
        return default


class Results:
    def __init__(self, folder):
        self.folder = folder

    def status(self, name):
        return read(self.folder / f"{name}.status", "not run")

    def seconds(self, name):
        value = read(self.folder / f"{name}.seconds")
        return float(value) if value else None

    def peak(self, name):
        value = read(self.folder / f"{name}.peak_mib")
        return float(value) if value else None

    def output(self, name):
        return read(self.folder / f"{name}.out")

    def step(self, framework, arch):
        """The batch that ran (the largest tried first) and its JSON line, or what went wrong."""
        tried = sorted(self.folder.glob(f"{framework}-{arch}-b*.status"), key=lambda p: -int(p.stem.rsplit("b", 1)[1]))
        failures = []
        for status in tried:
            name = status.stem
            if self.status(name) == "ok":
                line = self.output(name).splitlines()[-1]
                return json.loads(line), self.peak(name), failures
            failures.append(f"b{name.rsplit('b', 1)[1]}: {self.status(name)}")
        return None, None, failures


def fmt(value, digits=1, unit=""):
    return "–" if value is None else f"{value:,.{digits}f}{unit}"


def step_table(results):
    rows = [
        "| network | burn batch | burn ms | PyTorch batch | PyTorch ms | burn / PyTorch | burn peak MiB | PyTorch peak MiB | PyTorch allocator MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for arch, label in ARCHS:
        burn, burn_peak, burn_fail = results.step("burn", arch)
        torch, torch_peak, torch_fail = results.step("torch", arch)
        ratio = "–"
        if burn and torch:
            if burn["batch"] == torch["batch"]:
                ratio = f"{burn['median_ms'] / torch['median_ms']:.2f}×"
            else:
                ratio = "batches differ"
        rows.append(
            f"| {label} | {burn['batch'] if burn else '–'} | {fmt(burn and burn['median_ms'])} "
            f"| {torch['batch'] if torch else '–'} | {fmt(torch and torch['median_ms'])} | {ratio} "
            f"| {fmt(burn_peak, 0)} | {fmt(torch_peak, 0)} | {fmt(torch and torch.get('allocator_peak_mib'), 0)} |"
        )
        for framework, failures in (("burn", burn_fail), ("PyTorch", torch_fail)):
            if failures:
                notes.append(f"- {label}, {framework}: " + "; ".join(failures))
    return "\n".join(rows), notes


def infer_dice(text):
    match = re.search(r"Dice\s*[:=]?\s*([0-9.]+)", text)
    return match.group(1) if match else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--cpu-quick-seconds", type=float)
    args = parser.parse_args()
    results = Results(args.out / "results")
    machine = read(args.out / "machine.txt")
    dry = "dry_run=1" in machine
    md = ["# relkd on a GPU: ci/gpu-check.sh report", ""]
    if dry:
        md += ["**Dry run** (CI): this machine's CPU (the `device=` line below: flex, or CubeCL's CPU "
               "runtime running the GPU's kernels) and tiny shapes; no figure here is a GPU figure.", ""]
    md += ["```", machine, "```", ""]

    table, notes = step_table(results)
    md += [
        "## One training step per network",
        "",
        "Forward, cross-entropy on random labels, backward, Adam; 1 input channel, 2 classes, full width; "
        "median over the timed runs after warm-up runs (burn: `train step-time --device cuda`, PyTorch: "
        "`ci/torch_reference.py`, the same networks). Batch: the largest of 16, 8, 4, 2 that ran. Peak MiB: "
        "the GPU's used memory during the process (nvidia-smi, CUDA context included) above what was in "
        "use before it; PyTorch's allocator peak beside it.",
        "",
        table,
        "",
    ]
    md += notes + ([""] if notes else [])
    if results.status("torch-params") != "not run":
        md += ["Parameter check of the PyTorch networks against relkd's live counts "
               f"({results.status('torch-params')}):", "", "```", results.output("torch-params"), "```", ""]

    quick_s = results.seconds("quick")
    md += ["## The quick run on the GPU", "", f"`train --teacher unetpp --student enet` (teacher, baseline, "
           f"distilled student): {results.status('quick')}, wall {fmt(quick_s, 0, ' s')}."]
    if args.cpu_quick_seconds and quick_s and results.status("quick") == "ok":
        md.append(f"The same run on the 2-core CPU (README): {args.cpu_quick_seconds:,.0f} s, "
                  f"{args.cpu_quick_seconds / quick_s:.1f}× the GPU's wall time.")
    report = read(args.out / "quick-report.md")
    if report:
        table2 = re.search(r"## Dice on the target site.*?\n\n(\|.*?)\n\n", report, re.S)
        md += ["", table2.group(1) if table2 else "(no Dice table in its report)"]
    md += ["", "## Data parallel", "", f"`train --devices …` for the students: {results.status('data-parallel')}, "
           f"wall {fmt(results.seconds('data-parallel'), 0, ' s')}.", ""]
    md += ["## The GPU-trained student through export and infer (CPU provider)", ""]
    if results.status("export") == "not run":
        md.append("Not run (no ONNX Runtime library in the pack, or no trained student).")
    else:
        dice = infer_dice(results.output("infer"))
        md.append(f"export: {results.status('export')}; infer: {results.status('infer')}"
                  + (f"; Dice on the phantom case: {dice}" if dice else "") + ".")
    md += ["", "`infer --provider cuda` needs the onnxruntime-gpu wheel, larger than what can be carried to "
           "this machine: ONNX Runtime's CUDA provider stays untested here.", ""]
    (args.out / "gpu-report.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
