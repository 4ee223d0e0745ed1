"""Build WebDataset tar shards (local folder or S3) from image folders, caption files, COCO or other shards.

Run locally:
    python -m data.make_shards my_images/ shards/ --image-size 64
    python -m data.make_shards my_images/ s3://bucket/run1 --captions captions.jsonl --workers 8
    python -m data.make_shards coco/annotations/captions_train2017.json s3://bucket/coco64
    python -m data.make_shards "s3://bucket/laion/{00000..00099}.tar" s3://bucket/laion64   # re-shard
On a cluster, as a job (it does not use Ray: it runs where the job's driver runs, the head node unless
--entrypoint-num-cpus asks for a worker's CPUs; it streams, so memory stays flat):
    ray job submit --working-dir . --entrypoint-num-cpus 8 -- python -m data.make_shards s3://bucket/raw.tar s3://bucket/run1 --workers 8

SRC is a folder of images with sidecar `name.txt` captions (one per line, searched recursively), a
folder plus `--captions` JSONL (`{"file": ..., "caption": ...}` or `"captions": [...]`) or COCO JSON,
a COCO `captions_*.json` (its image folder is found next to it, or give `--images`), or existing
WebDataset/img2dataset shards (folder, s3:// prefix, manifest.json, brace pattern, comma list).
DEST is a local folder or `s3://bucket/prefix`; AWS credentials, region and endpoint (including
AWS_ENDPOINT_URL for S3-compatible stores) come from the standard AWS environment and config files.

DEST receives `shard-000000.tar`, ... (each sample: `<key>.png`, `<key>.txt` with all captions one per
line, `<key>.json` with source, original size and captions), `skipped.jsonl` (every unused input and
why), `tokenizer.model` (sentencepiece trained on all captions) and, last, `manifest.json`. The same
inputs give byte-identical output whatever --workers is. Shards appear under their final name only
once complete; re-running an interrupted build finishes it, keeping the shards already written.

With `--val-fraction F` (0 < F < 1), DEST receives two such shard sets, `DEST/train/` and `DEST/val/`, ready
for `python -m ray_jobs.train --data DEST/train --val-data DEST/val`. Each input goes to val when a hash of
its name (its path under SRC, or shard#key) falls in the first F of the hash's range: about F of the inputs,
and an input stays in its split when inputs are added or removed. One tokenizer, trained on the train split's
captions only, is written to both (training reads the one beside --data for both sets).

    python -m data.make_shards my_images/ shards/ --image-size 32 --val-fraction 0.05

Inputs are untrusted (data/untrusted.py): symlinks out of SRC, captions-file entries or COCO file names
outside the image folder, images over --max-image-pixels and oversized captions are listed in
skipped.jsonl and never read; outputs are named by index, never after an input.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import importlib.metadata
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

from data import images, shard_spec, sources, storage, untrusted
from data.encode_workers import CHUNK, chunks, encode_chunk, ordered_map
from data.shard_writer import ShardWriter

# Same as onade.tokenizer.MODEL_TYPES; onade is imported lazily so worker processes (which import
# this module as their __main__) do not pay for torch.
TOKENIZER_TYPES = ("unigram", "word", "bpe")
WHOLE = ""  # the one shard set of a build without a split, in DEST itself
SPLITS = ("train", "val")  # with --val-fraction: DEST/train, DEST/val
TOKENIZER_SPLITS = (WHOLE, "train")  # whose captions train the tokenizer


def tool_version() -> str:
    try:
        return importlib.metadata.version("onade")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


# ---- the build ---------------------------------------------------------------------------------------

@dataclass
class Summary:
    dest: str
    num_samples: int = 0
    num_shards: int = 0
    num_reused: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    seconds: float = 0.0
    vocab_size: int = 0
    stale: list[str] = field(default_factory=list)
    val_fraction: float = 0.0
    splits: dict[str, "Summary"] = field(default_factory=dict)  # "train", "val" with --val-fraction

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def add(self, part: "Summary") -> None:
        """Count a split's build in this one (the whole build's)."""
        self.num_samples += part.num_samples
        self.num_shards += part.num_shards
        self.num_reused += part.num_reused
        self.skipped.update(part.skipped)

    def line(self, fmt: str, size: int) -> str:
        rate = self.num_samples / self.seconds if self.seconds > 0 else 0.0
        skipped = ", ".join(f"{n} {why}" for why, n in self.skipped.most_common())
        if self.splits:
            train, val = self.splits["train"], self.splits["val"]
            made = (f"{self.num_samples} samples ({fmt} {size}x{size}) split by --val-fraction {self.val_fraction:g}:"
                    f" train {train.num_samples} in {train.num_shards} shards -> {train.dest}, val {val.num_samples}"
                    f" in {val.num_shards} shards -> {val.dest}")
            listed, vocab = "each split's skipped.jsonl", f"{self.vocab_size} (trained on train's captions, in both)"
        else:
            made = f"{self.num_samples} samples in {self.num_shards} shards ({fmt} {size}x{size}) -> {self.dest}"
            listed, vocab = "skipped.jsonl", str(self.vocab_size)
        out = (f"make_shards: {made}; skipped {self.num_skipped}" + (f" ({skipped})" if skipped else "")
               + f", listed in {listed}; tokenizer vocab {vocab}; {self.seconds:.1f} s, {rate:.0f} samples/s")
        if self.num_reused:
            out += f"; {self.num_reused} shards kept from an earlier run"
        if self.stale:
            out += f"; WARNING {len(self.stale)} older shards in DEST are not in this manifest"
        if self.splits:
            out += (f"\ntrain with: python -m ray_jobs.train --data {self.splits['train'].dest} "
                    f"--val-data {self.splits['val'].dest}")
        return out


def reason_kind(reason: str) -> str:
    """`corrupt image: broken PNG` -> `corrupt image` (for the summary's counts)."""
    for sep in (":", " ("):
        reason = reason.split(sep, 1)[0]
    return reason.strip()


def split_of(source: str, val_fraction: float) -> str:
    """The split of the input named `source` (its path under SRC, or shard#key): "val" when the first 8 bytes of
    its name's sha256 fall in the first `val_fraction` of their range, else "train". A function of the name alone:
    an input keeps its split when others are added or removed, whatever the order or --workers."""
    digest = hashlib.sha256(source.encode("utf-8", "surrogatepass")).digest()
    return "val" if int.from_bytes(digest[:8], "big") < val_fraction * 2 ** 64 else "train"


def _validate(image_size: int, shard_size: int, vocab_size: int, workers: int, fmt: str, resize: str,
              tokenizer_type: str, max_pixels: int, val_fraction: float = 0.0) -> None:
    if not 1 <= image_size <= 4096:
        raise ValueError(f"--image-size must be between 1 and 4096, got {image_size}")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1 samples per shard, got {shard_size}")
    if vocab_size < 8:
        raise ValueError(f"--vocab-size must be >= 8, got {vocab_size}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if fmt not in images.FORMATS:
        raise ValueError(f"--format must be one of {sorted(images.FORMATS)}, got {fmt!r}")
    if resize not in images.RESIZE_MODES:
        raise ValueError(f"--resize must be one of {images.RESIZE_MODES}, got {resize!r}")
    if tokenizer_type not in TOKENIZER_TYPES:
        raise ValueError(f"--tokenizer-type must be one of {TOKENIZER_TYPES}, got {tokenizer_type!r}")
    if max_pixels < 1:
        raise ValueError(f"--max-image-pixels must be >= 1, got {max_pixels}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1): the share of inputs held out for validation (e.g. "
                         f"0.05; 0, the default, makes no split), got {val_fraction}")


def make_shards(src: str, dest: str, *, image_size: int = 64, shard_size: int = 1000, captions: str | None = None,
                images_dir: str | None = None, vocab_size: int = 512, tokenizer_type: str = "unigram",
                workers: int = 1, fmt: str = "png", resize: str = "crop", progress: bool = True,
                max_pixels: int = untrusted.DEFAULT_MAX_IMAGE_PIXELS, val_fraction: float = 0.0) -> Summary:
    """Build the shards (with `val_fraction` > 0: DEST/train and DEST/val); returns counts, per split in
    `.splits`. ValueError for unusable arguments, an unreachable DEST, or a split left empty."""
    t0 = time.monotonic()
    _validate(image_size, shard_size, vocab_size, workers, fmt, resize, tokenizer_type, max_pixels, val_fraction)
    src, dest = str(src), str(dest)
    untrusted.check_s3_root(dest, "DEST")
    if not storage.is_s3(dest):
        dest = os.path.abspath(dest)
    source = sources.detect(src, captions, images_dir)
    source.max_pixels = max_pixels
    storage.check_writable(dest)

    # One shard set in DEST, or with a split one per split folder, each complete on its own (shards, skipped.jsonl,
    # tokenizer, manifest). The tokenizer is trained on the captions of TRAIN only: validation's stay unseen.
    names = SPLITS if val_fraction > 0 else (WHOLE,)
    writers = {n: ShardWriter(storage.join(dest, n) if n else dest, shard_size, fmt) for n in names}
    parts = {n: Summary(w.dest) for n, w in writers.items()}
    route = (lambda name: split_of(name, val_fraction)) if val_fraction > 0 else (lambda name: WHOLE)
    # Captions for the tokenizer wait in an anonymous temporary file (deleted on close), not in a
    # list that would grow with the input.
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8") as tokenizer_captions:
        _write_samples(source, dest, writers, parts, route, tokenizer_captions, (image_size, resize, fmt, max_pixels),
                       workers, progress)
        if val_fraction > 0:  # the whole build's counts: the splits' added up
            whole = Summary(dest, val_fraction=val_fraction, splits=parts)
            for part in parts.values():
                whole.add(part)
        else:
            whole = parts[WHOLE]
        if whole.num_samples == 0:
            where = " and ".join(storage.join(p.dest, "skipped.jsonl") for p in parts.values())
            raise ValueError(f"no usable samples in {src}: all {whole.num_skipped} inputs were skipped "
                             f"({dict(whole.skipped)}); see {where}")
        for n, p in parts.items():
            if p.num_samples == 0:
                raise ValueError(f"--val-fraction {val_fraction:g} left the {n} split empty ({whole.num_samples} "
                                 f"usable samples in all): {'raise' if n == 'val' else 'lower'} it, or add inputs")

        from onade.tokenizer import Tokenizer

        tokenizer_captions.seek(0)
        tok = Tokenizer.train(tokenizer_captions, None, vocab_size=vocab_size, model_type=tokenizer_type)
    tok_bytes = tok.to_bytes()
    tokenizer = {"file": shard_spec.TOKENIZER, "vocab_size": tok.vocab_size, "model_type": tokenizer_type,
                 "sha256": hashlib.sha256(tok_bytes).hexdigest()}
    if val_fraction > 0:
        tokenizer["trained_on"] = "train"
    for n, part in parts.items():
        writer = writers[n]
        storage.write_bytes_atomic(storage.join(writer.dest, shard_spec.TOKENIZER), tok_bytes)
        part.vocab_size = tok.vocab_size
        manifest = {
            "format": "onade-shards/1",
            "tool": "data.make_shards",
            "tool_version": tool_version(),
            "source": {"kind": source.kind, "path": src, "captions": captions, "images": images_dir},
            **({"split": {"name": n, "val_fraction": val_fraction,
                          "assigned_by": "sha256 of the input's name, first 8 bytes < val_fraction * 2^64: val"}}
               if n else {}),
            "image_size": image_size,
            "resize": resize,
            "image_format": fmt,
            "shard_size": shard_size,
            "max_image_pixels": max_pixels,
            "num_samples": part.num_samples,
            "num_skipped": part.num_skipped,
            "skipped_by_reason": dict(sorted(part.skipped.items())),
            "shards": [r.to_json() for r in writer.records],
            "tokenizer": tokenizer,
            "skipped_file": "skipped.jsonl",
        }
        # The manifest goes last: its presence means the build finished.
        storage.write_bytes_atomic(storage.join(writer.dest, shard_spec.MANIFEST),
                                   (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
        part.stale = _cleanup(writer.dest, {r.name for r in writer.records})
    if val_fraction > 0:
        whole.vocab_size = tok.vocab_size
        # Shards of an earlier build without a split, in DEST itself: --data DEST would still read them.
        whole.stale = [s for part in parts.values() for s in part.stale] + _cleanup(dest, set())
    whole.seconds = time.monotonic() - t0
    return whole


def _write_samples(source: sources.Source, dest: str, writers: dict[str, ShardWriter], parts: dict[str, Summary],
                   route: Callable[[str], str], tokenizer_captions: IO[str], encoding: tuple[int, str, str, int],
                   workers: int, progress: bool) -> None:
    """Every input of `source` (but DEST's own files) encoded in `workers` processes (`encoding`: image size,
    resize mode, format, pixel limit) and written in input order to the shards of its split (`route(input name)`, a key of `writers`); the
    captions of TOKENIZER_SPLITS to `tokenizer_captions`; every input skipped listed in its split's skipped.jsonl
    and counted in its `parts` summary, with the samples and shards written."""
    # A local DEST inside SRC would otherwise be read back as input on a re-run.
    exclude = (dest,) if not storage.is_s3(dest) else ()
    total = sources.count_inputs(source.root, exclude) if source.kind in ("folder", "jsonl") else None

    from tqdm import tqdm

    with contextlib.ExitStack() as stack:
        logs = {n: stack.enter_context(tempfile.SpooledTemporaryFile(max_size=8 << 20, mode="w+b")) for n in writers}
        bar = stack.enter_context(tqdm(total=total, unit="input", desc="make_shards", disable=not progress,
                                       file=sys.stderr, mininterval=0.5))
        items = sources.iter_items(source, exclude)
        tasks = ((chunk, *encoding) for chunk in chunks(items, CHUNK))
        for results in ordered_map(encode_chunk, tasks, workers, max_pending=4 * workers):
            for r in results:
                split = route(r[1])
                if r[0] == "skip":
                    _, src_name, reason = r
                    logs[split].write((json.dumps({"source": src_name, "reason": reason}, ensure_ascii=False)
                                       + "\n").encode("utf-8"))
                    parts[split].skipped[reason_kind(reason)] += 1
                else:
                    _, src_name, caps, encoded, (w, h), mode = r
                    writer = writers[split]
                    key = f"{writer.num_samples:09d}"
                    meta = {"key": key, "source": src_name, "original_size": [w, h], "original_mode": mode,
                            "captions": caps}
                    writer.add(key, encoded, caps, meta)
                    if split in TOKENIZER_SPLITS:
                        tokenizer_captions.writelines(c + "\n" for c in caps)
            bar.update(len(results))
            bar.set_postfix(samples=sum(w.num_samples for w in writers.values()),
                            skipped=sum(p.num_skipped for p in parts.values()), refresh=False)
        for n, writer in writers.items():
            writer.flush()
            logs[n].seek(0)
            storage.write_file_atomic(storage.join(writer.dest, "skipped.jsonl"), logs[n])
            parts[n].num_samples = writer.num_samples
            parts[n].num_shards = len(writer.records)
            parts[n].num_reused = sum(r.reused for r in writer.records)


def _cleanup(dest: str, current: set[str]) -> list[str]:
    """Delete the temporary files an interrupted run left in a local DEST (on S3 objects are written whole,
    with no temporary key); report (not delete) shards this run did not write."""
    stale = []
    for url in storage.list_files(dest):
        name = storage.basename(url)
        if storage.PARTIAL_SUFFIX + "-" in name and not storage.is_s3(url):
            storage.delete(url)
        elif name.startswith("shard-") and name.endswith(".tar") and name not in current:
            stale.append(url)
    return stale


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.make_shards", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="image folder, COCO captions_*.json, or existing shards")
    ap.add_argument("dest", help="output folder or s3://bucket/prefix")
    ap.add_argument("--image-size", type=int, default=64, help="output side in pixels (default 64)")
    ap.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    ap.add_argument("--captions", help="JSONL captions file (or COCO JSON) for an image folder SRC")
    ap.add_argument("--images", dest="images_dir", help="image folder of a COCO SRC (default: found beside it)")
    ap.add_argument("--vocab-size", type=int, default=512, help="tokenizer vocabulary upper bound (default 512)")
    ap.add_argument("--tokenizer-type", default="unigram", choices=TOKENIZER_TYPES)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                    help="decoding processes (default: CPUs, at most 8); output does not depend on it")
    ap.add_argument("--format", dest="fmt", default="png", choices=sorted(images.FORMATS),
                    help="image encoding: png (default, lossless), webp (lossless) or jpg (lossy)")
    ap.add_argument("--resize", default="crop", choices=images.RESIZE_MODES,
                    help="crop (centre square, default) or pad (whole image, padded with white)")
    ap.add_argument("--max-image-pixels", type=int, default=untrusted.DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                    help="larger images are skipped from their header, undecoded (default "
                         f"{untrusted.DEFAULT_MAX_IMAGE_PIXELS:,}); files over 4 bytes per pixel are not read")
    ap.add_argument("--val-fraction", type=float, default=0.0, metavar="F",
                    help="hold out about F of the inputs (by a hash of each one's name) as a validation split: "
                         "DEST/train and DEST/val, one tokenizer trained on train's captions (default 0: no split)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        summary = make_shards(args.src, args.dest, image_size=args.image_size, shard_size=args.shard_size,
                              captions=args.captions, images_dir=args.images_dir, vocab_size=args.vocab_size,
                              tokenizer_type=args.tokenizer_type, workers=args.workers, fmt=args.fmt,
                              resize=args.resize, progress=not args.no_progress, max_pixels=args.max_image_pixels,
                              val_fraction=args.val_fraction)
    except ValueError as e:
        print(f"make_shards: error: {e}", file=sys.stderr)
        return 2
    print(summary.line(args.fmt, args.image_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
