#!/usr/bin/env python3
"""relkd's int8 files against ONNX Runtime's own quantizer on the same float32 files (issue #32).

For each NAME: NAME.onnx (relkd's float32) and NAME-int8.onnx (relkd's `export --int8`) in the
folder. The anchor is `onnxruntime.quantization.quantize_static` applied to NAME.onnx (QDQ,
per-channel int8 weights, uint8 activations, calibrated on the same kind of input as relkd's
paper-model files: normal noise, as z-scored slices roughly are). The three files then run in
this one process, in turns of a block of runs each (1×1×S×S, batch 1, 2 intra-op threads, every graph
optimisation), and each median is reported with its ratio to the float32 file's.

    python3 -m venv .venv-ort && .venv-ort/bin/pip install onnxruntime==1.31.1 onnx numpy
    cargo run --release -p relkd-export --example paper_models -- paper
    .venv-ort/bin/python ci/int8_bench.py paper enet espnet erfnet [--size 384] [--runs 60] [--block 10]
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static


class NoiseReader(CalibrationDataReader):
    """A few normal-noise slices, as relkd's paper-model files are calibrated."""

    def __init__(self, input_name, size, count=8, seed=0):
        rng = np.random.default_rng(seed)
        self.batches = iter(
            [{input_name: rng.standard_normal((1, 1, size, size)).astype(np.float32)} for _ in range(count)]
        )

    def get_next(self):
        return next(self.batches, None)


def session(path, threads):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("names", nargs="+")
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--block", type=int, default=10, help="runs of one file before the next file's")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.block < 1 or args.runs < args.block:
        parser.error(f"--runs ({args.runs}) must be at least --block ({args.block}), which must be at least 1")
    print(
        f"ONNX Runtime {ort.__version__}, 1×1×{args.size}×{args.size}, batch 1, {args.threads} threads; "
        f"median ms of {args.runs} runs in blocks of {args.block}, the files in turn, after 3 warm-ups\n"
    )
    print("| network | float32 | relkd int8 | ORT quantizer int8 | relkd int8 / fp32 | anchor / fp32 | relkd / anchor |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.names:
            fp32 = os.path.join(args.folder, f"{name}.onnx")
            relkd = os.path.join(args.folder, f"{name}-int8.onnx")
            anchor = os.path.join(scratch, f"{name}-ort-int8.onnx")
            input_name = ort.InferenceSession(fp32, providers=["CPUExecutionProvider"]).get_inputs()[0].name
            quantize_static(
                fp32,
                anchor,
                NoiseReader(input_name, args.size),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
            sessions = [session(p, args.threads) for p in (fp32, relkd, anchor)]
            x = np.random.default_rng(1).standard_normal((1, 1, args.size, args.size)).astype(np.float32)
            for s in sessions:
                for _ in range(3):
                    s.run(None, {input_name: x})
            # Blocks of runs, the files in turn: while one file runs, the other sessions' threads
            # must be asleep. Interleaved run by run, each session's intra-op threads were still
            # spinning (ONNX Runtime's default, which is what makes a lone session fast) when the
            # next file started, and took the 2 cores from it: ENet's float32 measured 30-40 ms
            # that way against 15.6 ms with spinning off and 12.3 ms alone. Blocks keep the
            # interleaving's protection against the machine's drift.
            times = [[], [], []]
            for _ in range(args.runs // args.block):
                for s, t in zip(sessions, times):
                    s.run(None, {input_name: x})  # wakes this session's threads
                    for _ in range(args.block):
                        start = time.perf_counter()
                        s.run(None, {input_name: x})
                        t.append((time.perf_counter() - start) * 1e3)
            f, r, a = (statistics.median(t) for t in times)
            print(f"| {name} | {f:.1f} ms | {r:.1f} ms | {a:.1f} ms | {r / f:.2f} | {a / f:.2f} | {r / a:.2f} |")


if __name__ == "__main__":
    main()
