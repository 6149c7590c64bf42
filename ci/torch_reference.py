#!/usr/bin/env python3
"""PyTorch reference of relkd's five networks, to time the same training step as `train step-time`.

The networks (ci/torch_networks.py) are written from SPEC §3 and relkd's Burn models, layer for
layer, so that the two frameworks run the same computation. Trainable parameter counts equal
relkd's live counts (`train models`), checked by --check-params.

    python3 ci/torch_reference.py --check-params
    python3 ci/torch_reference.py --arch enet --batch 16 --size 384 --device cuda --runs 10
    python3 ci/torch_reference.py --arch espnet --export-onnx espnet-pytorch.onnx

A step is forward, cross-entropy on random labels, backward and an Adam update; the printed line
is JSON with the median, min and max over the timed runs (after warm-up runs) and, on CUDA, the
peak memory PyTorch's allocator held.
"""

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from torch_networks import NETWORKS

# relkd's live (trainable) parameter counts at one input channel and two classes: Table 1 minus
# the layers that never run (crates/models/src/lib.rs documents each difference).
LIVE_PARAMS = {
    "espnet": 183_725,
    "enet": 335_966,
    "erfnet": 2_062_872,
    "unetpp": 36_628_546,
    "deeplabv3plus": 54_746_962,
}


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_params():
    ok = True
    for name, make in NETWORKS.items():
        count, expected = trainable(make()), LIVE_PARAMS[name]
        ok &= count == expected
        print(f"{name:<14} {count:>12,} {'=' if count == expected else '≠'} relkd {expected:,}")
    return ok


def time_step(arch, batch, size, device, warmup, runs):
    torch.manual_seed(0)
    model = NETWORKS[arch]().to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, size, size, device=device)
    labels = torch.randint(0, 2, (batch, size, size), device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    times = []
    for i in range(warmup + runs):
        sync()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        loss.item()  # waits for the step, as relkd reads its loss
        sync()
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {
        "framework": "pytorch",
        "version": torch.__version__,
        "arch": arch,
        "batch": batch,
        "size": size,
        "device": device,
        "runs": runs,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "allocator_peak_mib": peak,
    }


def export_onnx(model, path, size, exporter="dynamo", dynamic_hw=True):
    """`model` in inference mode as ONNX, as a PyTorch user would export it (constant folding
    on: batch norms folded into the convolutions), one file. Height and width are dynamic unless
    `dynamic_hw` is false (ENet: no exporter traces max_unpool2d with a symbolic output size, and
    the TorchScript one not at all)."""
    model = model.eval()
    x = torch.randn(1, 1, size, size)
    spatial = {2: "H", 3: "W"} if dynamic_hw else {}
    dynamic = {"image": {0: "N", **spatial}, "logits": {0: "N", **spatial}}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (x,),
            path,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=17,
            do_constant_folding=True,
            dynamo=exporter == "dynamo",
            **({"external_data": False} if exporter == "dynamo" else {}),
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-params", action="store_true", help="compare parameter counts with relkd's")
    parser.add_argument("--arch", choices=sorted(NETWORKS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--export-onnx", metavar="FILE", help="write --arch as ONNX (inference mode) instead of timing")
    parser.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo")
    args = parser.parse_args()
    if args.check_params:
        sys.exit(0 if check_params() else 1)
    if args.arch is None:
        parser.error("--arch or --check-params is required")
    if args.export_onnx:
        torch.manual_seed(0)
        export_onnx(NETWORKS[args.arch](), args.export_onnx, args.size, args.exporter, args.arch != "enet")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    print(json.dumps(time_step(args.arch, args.batch, args.size, args.device, args.warmup, args.runs)))


if __name__ == "__main__":
    main()
