"""The inpainting gallery on real icons before and after the sampler default, as one PNG (the README's).

    python -m bench.quality --data twemoji --preset small --steps 1100 --out bench_out/tw   # a model and icons
    python -m bench.icon_gallery_shot --checkpoint bench_out/tw/runs/run/export --images bench_out/tw/images/val \
        --out docs/images/icons-before-after.png

Copies --num-images icons of --images (with their .txt caption sidecars) into a temporary folder: the flags
first (captions "flag of ..."), those with the fewest colours in the centre hole first, so the fills have
flat regions or stripes to continue; then the other icons in the same order. Runs `python -m ray_jobs.inpaint`
on them twice, with the same centre hole (--mask center), seed, --samples, ancestral sampler and 32 forward
passes, and --reference (each row and the totals line give the original hole's roughness and specks beside
the fills'):
- before: `--channels joint --top-p 1`, the model's own draws (the old default);
- after: `--channels sequence --top-p 0.3` (the default).
Each gallery is opened in Debian's Chromium (Playwright's sync API, as tests/test_gallery_browser.py does),
cut to its totals line and table (the size and full-size-link columns hidden), and the two are stacked,
before on top, each under a label. Both runs use a local Ray (RAY_ADDRESS is dropped: the job writes into a
local temporary folder) with one CPU actor. Prints the two totals lines; --work keeps the job outputs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
RUNS = {
    # output folder: (label, the job's sampler flags)
    "before": ("Before: --channels joint --top-p 1 (the old default: the model's own draws)",
               ["--channels", "joint", "--top-p", "1"]),
    "after": ("After: --channels sequence --top-p 0.3 (the default)", ["--channels", "sequence", "--top-p", "0.3"]),
}
# Hidden: the title, the "rows 1-8" line and columns 4 (size: every icon is the model's size) and 6 (links to
# the full-size files), which say nothing here.
HIDE = "h1, nav, p:not([class]) { display: none; } td:nth-child(4), th:nth-child(4), td:nth-child(6), " \
       "th:nth-child(6) { display: none; } body { margin: 12px; }"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def caption(png: Path) -> str:
    txt = png.with_suffix(".txt")
    lines = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if txt.exists() else []
    return lines[0] if lines else ""


def centre_colours(png: Path) -> int:
    """Distinct colours in the centre square of half the side: the job's --mask center."""
    rgb = np.asarray(Image.open(png).convert("RGB"))
    h, w = rgb.shape[:2]
    s = min(h, w) // 2
    top, left = (h - s) // 2, (w - s) // 2
    return len(np.unique(rgb[top:top + s, left:left + s].reshape(-1, 3), axis=0))


def pick_icons(images: Path, n: int) -> list[Path]:
    """Flags first, then the rest; within each, the fewest colours in the hole first (ties by name)."""
    pngs = sorted(images.glob("*.png"))
    return sorted(pngs, key=lambda p: (not caption(p).lower().startswith("flag"), centre_colours(p), p.name))[:n]


def run_job(checkpoint: str, inputs: Path, output: Path, flags: list[str], samples: int, seed: int) -> float:
    """One `python -m ray_jobs.inpaint` run on a local Ray; its wall time in seconds."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "ray_jobs.inpaint", "--checkpoint", checkpoint, "--input", str(inputs),
           "--output", str(output), "--mask", "center", "--strategy", "ancestral", "--steps", "32",
           "--samples", str(samples), "--seed", str(seed), "--reference", "--workers", "1",
           "--cpus-per-worker", "1", "--no-progress", *flags]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=Path(__file__).resolve().parents[1])
    return time.perf_counter() - t0


def screenshot(page, gallery: Path, png: Path) -> str:
    """The gallery's totals line and table as a PNG; returns the totals line."""
    page.goto(gallery.resolve().as_uri(), wait_until="load")
    page.add_style_tag(content=HIDE)
    page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
    top = page.locator("p.totals").bounding_box()
    table = page.locator("table").bounding_box()
    page.screenshot(path=str(png), full_page=True, clip={
        "x": 0, "y": top["y"] - 6, "width": max(top["x"] + top["width"], table["x"] + table["width"]) + 12,
        "height": table["y"] + table["height"] - top["y"] + 12})
    return page.locator("p.totals").inner_text()


def stitch(shots: list[tuple[str, Path]], out: Path) -> None:
    """The screenshots stacked, each under its label, on white; saved with 256 colours (median cut, dithered),
    a third of the bytes of the full-colour PNG (the thumbnails are upscaled JPEGs) and alike to the eye."""
    images = [(label, Image.open(p).convert("RGB")) for label, p in shots]
    pad, label_h = 12, 34
    width = max(im.width for _, im in images) + 2 * pad
    for size in range(20, 9, -1):  # the largest font whose longest label fits
        try:
            font = ImageFont.truetype(FONT, size)
        except OSError:
            font = ImageFont.load_default(size=size)
        if max(font.getlength(label) for label, _ in images) <= width - 2 * pad:
            break
    height = sum(label_h + im.height + pad for _, im in images) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    y = pad
    for i, (label, im) in enumerate(images):
        if i:
            draw.line([(pad, y - pad // 2), (width - pad, y - pad // 2)], fill=(120, 120, 120), width=2)
        draw.text((pad, y + 4), label, fill=(0, 0, 0), font=font)
        canvas.paste(im, (pad, y + label_h))
        y += label_h + im.height + pad
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)


def main(argv=None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="an exported checkpoint folder")
    p.add_argument("--images", required=True, help="a folder of icon PNGs with .txt caption sidecars")
    p.add_argument("--num-images", type=int, default=8)
    p.add_argument("--samples", type=int, default=2, help="samples per icon and run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="docs/images/icons-before-after.png")
    p.add_argument("--work", default="", help="keep the inputs, job outputs and screenshots here (default: a "
                                               "temporary folder, removed)")
    args = p.parse_args(argv)
    if not os.access(CHROMIUM, os.X_OK):
        sys.exit(f"no Chromium at {CHROMIUM}: sudo apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    work = Path(args.work or tempfile.mkdtemp(prefix="onade_icon_shot_"))
    inputs = work / "icons"
    inputs.mkdir(parents=True, exist_ok=True)
    try:
        icons = pick_icons(Path(args.images), args.num_images)
        for png in icons:
            shutil.copy2(png, inputs / png.name)
            if png.with_suffix(".txt").exists():
                shutil.copy2(png.with_suffix(".txt"), inputs / (png.stem + ".txt"))
        print(f"{len(icons)} icons: " + "; ".join(f"{png.stem} ({caption(png)})" for png in icons), flush=True)
        for name, (_, flags) in RUNS.items():
            seconds = run_job(args.checkpoint, inputs, work / name, flags, args.samples, args.seed)
            print(f"{name}: {seconds:.1f} s", flush=True)
        totals = {}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 1600})
                for name in RUNS:
                    totals[name] = screenshot(page, work / name / "index.html", work / f"{name}.png")
            finally:
                browser.close()
        stitch([(label, work / f"{name}.png") for name, (label, _) in RUNS.items()], Path(args.out))
        for name, line in totals.items():
            print(f"{name}: {line}")
        print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KB)")
        return totals
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
