"""The phantom judged by a real prostate model (issue #27).

TAPS (PyPI `lavlab-taps`, MIT) is a MONAI SegResNetDS trained on real T2-weighted prostate MRI.
This runs TAPS's own `segment` (its preprocessing, sliding window, logit blur, threshold and
inversion to the source grid) on phantom cases and scores the mask against the phantom's label.
Nothing here feeds back into the phantom: the generator never reads TAPS or its model.

    python ci/realism_check.py DATA_ROOT OUT_DIR [--cases N] [--sites RUNMC,BMC,...] [--window | --by-window]

Writes OUT_DIR/cases.tsv (one row per case), OUT_DIR/summary.md (per-site table) and TAPS's
masks under OUT_DIR/masks/. With the phantom's `--tissues` volumes present it also reports the
fraction of the peripheral zone and of the central gland that TAPS covered. `--window` runs
a quick proxy instead (see `window_case`), seconds a case, for comparing phantom variants;
`--by-window` writes OUT_DIR/windows.tsv: the gland's logits in each window of TAPS's sliding
window (see `by_window_case`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

# The site folders in paper order (SPEC §2).
SITES = ["RUNMC", "BMC", "HCRUDB", "UCL", "BIDMC", "HK"]
# `--tissues` codes of the phantom's zones (crates/relkd-core/src/phantom/anatomy.rs).
PERIPHERAL_ZONE = 24
CENTRAL_GLAND = (25, 26, 27, 28)  # transition zone, glandular and stromal nodules, anterior stroma
FOUND = 0.5


def label_path(site_dir: Path, case: str) -> Path:
    for suffix in ("_segmentation", "_Segmentation"):
        path = site_dir / f"{case}{suffix}.nii.gz"
        if path.is_file():
            return path
    raise FileNotFoundError(f"{site_dir}: no label for {case}")


def site_cases(site_dir: Path, count: int) -> list[str]:
    """The first `count` cases of a site folder (`CaseNN.nii.gz`) by name; exits if it has none."""
    cases = sorted(p.name[: -len(".nii.gz")] for p in site_dir.glob("Case??.nii.gz"))[:count]
    if not cases:
        raise SystemExit(f"{site_dir}: no CaseNN.nii.gz")
    return cases


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 2.0 * float((a & b).sum()) / float(total) if total else 1.0


def segment_case(image: Path, out: Path):
    """TAPS's mask as a boolean array on the image's grid, or None when TAPS finds nothing."""
    from taps.inference import BlankMaskError, segment

    try:
        written = segment(image, out, None, device="cpu", exact=True)
    except BlankMaskError:
        return None
    return np.asarray(nib.load(written).dataobj) > 0


@functools.cache
def _network():
    """TAPS's bundled ONNX network, loaded once."""
    import onnxruntime as ort
    from taps import inference

    return ort.InferenceSession(str(inference.resolve_checkpoint(None)), providers=["CPUExecutionProvider"])


def _preprocessed(image: Path, label: Path):
    """TAPS's preprocessing (`build_preprocessing`) of image and label together, the label by
    nearest neighbour: (z-scored image, boolean label) on TAPS's 0.8×0.8×3 mm grid, cropped."""
    import torch
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        Spacingd,
    )
    from taps import inference

    keys = ["image", "label"]
    preprocess = Compose(
        [
            LoadImaged(keys=keys, image_only=False),
            EnsureChannelFirstd(keys=keys),
            EnsureTyped(keys=keys, dtype=torch.float32),
            Orientationd(keys=keys, axcodes="RAS", labels=None),
            Spacingd(keys=keys, pixdim=inference.VOXEL_SPACING, mode=("bilinear", "nearest")),
            NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
            CropForegroundd(keys=keys, source_key="image", margin=5),
        ]
    )
    data = preprocess({"image": str(image), "label": str(label)})
    return data["image"][0].numpy(), data["label"][0].numpy() > 0


def _logits(window: np.ndarray) -> np.ndarray:
    session = _network()
    return session.run(None, {session.get_inputs()[0].name: window[None, None]})[0][0, 0]


def window_case(image: Path, label: Path):
    """A quick proxy of `segment` (seconds, not minutes): TAPS's preprocessing of image and label
    together, then one 128×128×32 window of TAPS's network centred on the label's centre, blurred
    and thresholded as TAPS does. Returns (mask, label) on TAPS's 0.8×0.8×3 mm grid inside the
    window. Kinder than `segment` (no sliding-window blend, the window centred on the gland by
    the answer): for comparing phantom variants against each other, never for the acceptance."""
    from scipy import ndimage
    from taps import inference

    x, y = _preprocessed(image, label)
    window = np.zeros(inference.ROI_SIZE, np.float32)
    truth = np.zeros(inference.ROI_SIZE, bool)
    centre = np.argwhere(y).mean(axis=0).astype(int) if y.any() else np.array(x.shape) // 2
    src, dst = [], []
    for c, n, roi in zip(centre, x.shape, inference.ROI_SIZE):
        start = min(max(c - roi // 2, 0), max(n - roi, 0))
        src.append(slice(start, min(start + roi, n)))
        dst.append(slice(0, src[-1].stop - start))
    window[tuple(dst)], truth[tuple(dst)] = x[tuple(src)], y[tuple(src)]
    logits = ndimage.gaussian_filter(_logits(window), inference.DEFAULT_SIGMA, mode="nearest")
    return 1.0 / (1.0 + np.exp(-logits)) > inference.DEFAULT_PROBABILITY_THRESHOLD, truth


def by_window_case(image: Path, label: Path) -> list[tuple[float, float, float, float, float]]:
    """Where TAPS's sliding window sees the gland (`--by-window`): for each of the 128×128×32
    windows that `segment` runs (MONAI's positions at half overlap; where the image is smaller
    than a window, padded with zeros, the z-scored mean, as MONAI pads it, the smaller half
    first) holding at least a tenth of the gland: (the gland's share inside the window; from the
    window's centre to the centroid of that part, the in-plane distance, its anterior and its
    superior component, in mm; the median raw logit over it). A logit above 0.2 is TAPS's
    probability threshold of 0.55 before its blend and blur."""
    from monai.data.utils import dense_patch_slices
    from taps import inference

    x, y = _preprocessed(image, label)
    roi = inference.ROI_SIZE
    short = [max(r - n, 0) for n, r in zip(x.shape, roi)]
    pad = [(d // 2, d - d // 2) for d in short]
    x, y = np.pad(x, pad), np.pad(y, pad)
    gland = int(y.sum())
    rows = []
    for box in dense_patch_slices(x.shape, roi, [r // 2 for r in roi]):
        inside = y[box]
        if inside.sum() < 0.1 * gland:
            continue
        centroid = np.argwhere(inside).mean(axis=0)
        offset = (centroid - (np.array(roi) - 1) / 2.0) * np.array(inference.VOXEL_SPACING)
        logit = float(np.median(_logits(x[box].astype(np.float32))[inside]))
        rows.append((float(inside.sum()) / gland, float(np.hypot(*offset[:2])), *map(float, offset[1:]), logit))
    return rows


def by_window_main(data: Path, out: Path, sites: list[str], cases: int) -> int:
    """`--by-window`: OUT/windows.tsv, one row per window of `by_window_case`."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "windows.tsv").open("w") as tsv:
        print("site\tcase\tgland_share\toffset_mm\tanterior_mm\tsuperior_mm\tmedian_logit", file=tsv, flush=True)
        for site in sites:
            for case in site_cases(data / site, cases):
                image, label = data / site / f"{case}.nii.gz", label_path(data / site, case)
                for share, offset, anterior, superior, logit in by_window_case(image, label):
                    line = f"{share:.2f}\t{offset:.0f}\t{anterior:+.0f}\t{superior:+.0f}\t{logit:+.1f}"
                    print(f"{site}\t{case}\t{line}", file=tsv, flush=True)
                print(f"{site} {case}", flush=True)
    print(f"per window: {out / 'windows.tsv'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="phantom root (train phantom --out DATA --tissues)")
    parser.add_argument("out", type=Path, help="folder for the tables and TAPS's masks")
    parser.add_argument("--cases", type=int, default=3, help="cases per site (default 3)")
    parser.add_argument("--sites", default=",".join(SITES), help="comma-separated site folders")
    parser.add_argument("--window", action="store_true", help="the quick proxy (window_case), not TAPS's segment")
    parser.add_argument("--by-window", action="store_true", help="the gland's logits in each of TAPS's windows (by_window_case)")
    args = parser.parse_args()
    import taps.inference  # sets its logger to INFO on import: quieten it after

    # TAPS's QC warnings (volume range, holes, border) would interleave with the progress lines.
    logging.getLogger(taps.inference.__name__).setLevel(logging.ERROR)

    if args.by_window:
        return by_window_main(args.data, args.out, args.sites.split(","), args.cases)
    masks = args.out / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    rows = []
    header = "site\tcase\tdice\tfound\tblank\tpredicted_cc\tlabel_cc\tpz_covered\tcg_covered\tseconds"
    table = args.out / "cases.tsv"
    with table.open("w") as tsv:
        print(header, file=tsv, flush=True)
        for site in args.sites.split(","):
            site_dir = args.data / site
            for case in site_cases(site_dir, args.cases):
                start = time.monotonic()
                image, label_file = site_dir / f"{case}.nii.gz", label_path(site_dir, case)
                if args.window:
                    # Scored on TAPS's grid: the label comes back resampled with the image.
                    predicted, label = window_case(image, label_file)
                    voxel_cc = float(np.prod(taps.inference.VOXEL_SPACING)) / 1000.0
                else:
                    label_img = nib.load(label_file)
                    label = np.asarray(label_img.dataobj) > 0
                    voxel_cc = abs(float(np.linalg.det(label_img.affine[:3, :3]))) / 1000.0
                    predicted = segment_case(image, masks / f"{site}_{case}.nii.gz")
                blank = predicted is None
                if blank:
                    predicted = np.zeros_like(label)
                score = dice(predicted, label)
                pz = cg = float("nan")
                tissues = args.data / "tissues" / site / f"{case}_tissues.nii.gz"
                if tissues.is_file() and not args.window:
                    codes = np.asarray(nib.load(tissues).dataobj)
                    in_pz, in_cg = codes == PERIPHERAL_ZONE, np.isin(codes, CENTRAL_GLAND)
                    pz = float((predicted & in_pz).sum()) / max(int(in_pz.sum()), 1)
                    cg = float((predicted & in_cg).sum()) / max(int(in_cg.sum()), 1)
                row = (site, case, score, score > FOUND, blank, predicted.sum() * voxel_cc, label.sum() * voxel_cc, pz, cg)
                seconds = time.monotonic() - start
                rows.append(row)
                print(
                    f"{site}\t{case}\t{score:.3f}\t{int(row[3])}\t{int(blank)}\t{row[5]:.1f}\t{row[6]:.1f}"
                    f"\t{pz:.2f}\t{cg:.2f}\t{seconds:.0f}",
                    file=tsv,
                    flush=True,
                )
                print(f"{site} {case}: Dice {score:.3f}{' (blank)' if blank else ''}, {seconds:.0f} s", flush=True)

    lines = ["| site | cases | found (Dice > 0.5) | mean Dice | blank |", "|---|---|---|---|---|"]
    for site in dict.fromkeys(r[0] for r in rows):
        of_site = [r for r in rows if r[0] == site]
        lines.append(
            f"| {site} | {len(of_site)} | {sum(r[3] for r in of_site)} | "
            f"{np.mean([r[2] for r in of_site]):.2f} | {sum(r[4] for r in of_site)} |"
        )
    found = sum(r[3] for r in rows)
    lines.append(
        f"| all | {len(rows)} | {found} ({100.0 * found / len(rows):.0f}%) | "
        f"{np.mean([r[2] for r in rows]):.2f} | {sum(r[4] for r in rows)} |"
    )
    summary = "\n".join(lines) + "\n"
    (args.out / "summary.md").write_text(summary)
    print(summary)
    print(f"per case: {table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
