#!/usr/bin/env python3
"""A UNet++ teacher trained in PyTorch and exported by `torch.onnx.export`, for
`train --teacher-onnx`: the way a user who already has a PyTorch teacher brings it to relkd.

The network is ci/torch_networks.py's UNet++ (SPEC §3) at a reduced base width; it trains on one
site of a dataset in relkd's layout (SITE/CaseNN.nii.gz with CaseNN_segmentation.nii.gz) with
relkd's preprocessing written out here independently: each volume z-scored over all its voxels,
each axial slice resized bilinearly (half-pixel centres, align_corners=False) to SIZE × SIZE,
masks binarised and resized by nearest neighbour, slices with prostate only. Cross-entropy and
Adam; the weights of the epoch with the lowest training loss are exported (TorchScript exporter,
so node names follow the module names: UNet++'s x3_0 is `/nodes.3.0/nodes.3.0.5/Relu_output_0`).

    python ci/torch_teacher.py --data ~/.cache/relkd/phantom-v4-6x8-128px-seed0 --site HK \\
        --exclude-cases-of runs/QUICK_RUN --out unetpp-torch.onnx
    train --teacher-onnx unetpp-torch.onnx --teacher-features /nodes.3.0/nodes.3.0.5/Relu_output_0

`--exclude-cases-of RUN` leaves out the cases a relkd run scores its models on (its scores.csv),
so that the teacher never trains on the test cases of the run it guides.
"""

import argparse
import csv
import pathlib
import sys
import time

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from torch_networks import Unetpp  # noqa: E402
from torch_reference import export_onnx  # noqa: E402

TAP = "/nodes.3.0/nodes.3.0.5/Relu_output_0"


def site_cases(data, site, excluded):
    """(image, mask) paths of a site's cases, minus the excluded case ids."""
    cases = []
    for image in sorted((data / site).glob("Case*.nii*")):
        case = image.name.split(".")[0]
        if "_" in case or case in excluded:
            continue
        masks = [m for m in (data / site).glob(f"{case}_*egmentation.nii*")]
        if not masks:
            sys.exit(f"{image}: no mask {case}_segmentation.nii.gz beside it")
        cases.append((case, image, masks[0]))
    return cases


def slices(image_path, mask_path, size):
    """relkd's training slices of one case: z-scored volume, resized slices with prostate."""
    image = np.asarray(nib.load(image_path).dataobj, dtype=np.float64)
    mask = np.asarray(nib.load(mask_path).dataobj) != 0
    std = image.std()
    image = (image - image.mean()) / (std if std > 0 else 1.0)
    # NIfTI arrays are [x, y, z]; relkd's slices are rows of y and columns of x.
    image = torch.from_numpy(image.transpose(2, 1, 0).astype(np.float32))
    mask = torch.from_numpy(mask.transpose(2, 1, 0).astype(np.float32))
    keep = mask.flatten(1).any(1)
    image = F.interpolate(image[keep, None], size=(size, size), mode="bilinear", align_corners=False)
    mask = F.interpolate(mask[keep, None], size=(size, size), mode="nearest")
    return image, mask[:, 0].long()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=pathlib.Path, required=True, help="dataset root (one folder per site)")
    parser.add_argument("--site", required=True, help="the site folder to train on")
    parser.add_argument("--exclude-cases-of", type=pathlib.Path, metavar="RUN", help="a relkd run folder")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--base", type=int, default=8, help="UNet++ base filters (the paper: 64)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, required=True)
    args = parser.parse_args()
    if args.out.exists():
        sys.exit(f"{args.out} exists; choose another --out")

    excluded = set()
    if args.exclude_cases_of:
        with open(args.exclude_cases_of / "scores.csv") as f:
            excluded = {row["case"] for row in csv.DictReader(f) if row["site"] == args.site}
    cases = site_cases(args.data, args.site, excluded)
    if not cases:
        sys.exit(f"no cases of {args.site} left in {args.data}")
    pairs = [slices(image, mask, args.size) for _, image, mask in cases]
    images, masks = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    print(
        f"{args.site}: {len(cases)} case(s) ({', '.join(c for c, _, _ in cases)}), {len(images)} slices; "
        f"left out {', '.join(sorted(excluded)) or 'none'}"
    )

    torch.manual_seed(args.seed)
    model = Unetpp(classes=2, base=args.base)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    best, best_state = float("inf"), None
    started = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(images))
        total = 0.0
        for i in range(0, len(order), args.batch):
            batch = order[i : i + args.batch]
            if len(batch) < 2:  # batch norm needs two samples
                continue
            loss = F.cross_entropy(model(images[batch]), masks[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        total /= len(images)
        if total < best:
            best, best_state = total, {k: v.clone() for k, v in model.state_dict().items()}
        print(f"epoch {epoch + 1:>3}/{args.epochs}  loss {total:.4f}  {time.time() - started:.0f} s")
    model.load_state_dict(best_state)
    export_onnx(model, str(args.out), args.size, exporter="torchscript")
    print(f"wrote {args.out} (best training loss {best:.4f}); distil from its x3_0 with --teacher-features {TAP}")


if __name__ == "__main__":
    main()
