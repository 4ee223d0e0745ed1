"""Enumerate the inputs of a shard build, in a deterministic order, as `Item`s.

Four kinds of source:
  - folder:  images found recursively, each with a sidecar `name.txt` (one caption per line);
  - jsonl:   a folder plus a JSONL file of `{"file": ..., "caption": ...}` or `{"file": ..., "captions": [...]}`;
  - coco:    a COCO captions JSON (`annotations/captions_*.json`) plus its image folder;
  - shards:  existing WebDataset / img2dataset tar shards (local or s3://) to re-shard.
Everything that will not become a sample is yielded too, as an Item with `skip` set, so that
skipped.jsonl lists every unused input. Items carry a path (read by the worker) or the bytes.
"""

from __future__ import annotations

import itertools
import json
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data import shard_spec, storage
from data.images import IMAGE_EXTENSIONS

SHARD_IMAGE_EXTS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "ppm", "gif")


@dataclass
class Item:
    source: str  # what skipped.jsonl and the sample's json call it (relative to SRC where possible)
    captions: list[str] | None = None
    path: str | None = None  # local file the worker reads
    data: bytes | None = None  # or the bytes themselves (from a tar)
    skip: str | None = None  # already known to be unusable, and why


@dataclass
class Source:
    kind: str  # folder | jsonl | coco | shards
    root: str  # SRC as a folder (or the shard spec)
    captions_file: str | None = None
    images_dir: str | None = None

    def describe(self) -> str:
        extra = f" + {self.captions_file}" if self.captions_file else ""
        return f"{self.kind}:{self.root}{extra}"


def clean_captions(lines) -> list[str]:
    """Non-empty captions with whitespace runs (including newlines inside a JSON caption) made single
    spaces: the shard's txt member holds one caption per line."""
    return [" ".join(ln.split()) for ln in lines if isinstance(ln, str) and ln.strip()]


def _is_coco(path: str) -> bool:
    """COCO files are big; peek at the start instead of parsing the whole file twice."""
    with open(path, "rb") as f:
        head = f.read(1 << 16).decode("utf-8", errors="ignore")
    return head.lstrip().startswith("{") and any(k in head for k in ('"annotations"', '"images"', '"info"'))


def detect(src: str, captions: str | None = None, images: str | None = None) -> Source:
    """Decide which kind of source SRC (with --captions / --images) is; ValueError if none fits."""
    if storage.is_s3(src) or src.endswith(".tar") or "{" in src or "," in src:
        return Source("shards", src)
    p = Path(src)
    if src.endswith(".json") and p.is_file():
        if _is_coco(src):
            return Source("coco", str(p.parent), captions_file=str(p), images_dir=images or _coco_images(p))
        return Source("shards", src)  # a manifest.json from an earlier build
    if not p.exists():
        raise ValueError(f"source {src!r} does not exist: give an image folder, a COCO captions JSON, or shards")
    if not p.is_dir():
        raise ValueError(f"source {src!r} is a file but not a COCO captions .json or a .tar shard")
    if captions:
        if not Path(captions).is_file():
            raise ValueError(f"--captions file {captions!r} does not exist")
        if captions.endswith(".json") and _is_coco(captions):
            return Source("coco", str(p), captions_file=captions, images_dir=str(p))
        return Source("jsonl", str(p), captions_file=captions)
    top = [e for e in os.scandir(p) if e.is_file()]
    if any(e.name.endswith(".tar") for e in top) and not any(_is_image_name(e.name) for e in top):
        return Source("shards", str(p))
    return Source("folder", str(p))


def _coco_images(json_path: Path) -> str:
    # COCO layout: coco/annotations/captions_train2017.json next to coco/train2017/.
    split = json_path.stem.removeprefix("captions_")
    for cand in (json_path.parent.parent / split, json_path.parent / split):
        if cand.is_dir():
            return str(cand)
    raise ValueError(f"cannot find the image folder for {json_path} (looked for "
                     f"{json_path.parent.parent / split}); pass it with --images DIR")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def walk_sorted(root: str, exclude: tuple[str, ...] = ()) -> Iterator[str]:
    """Files under root, recursively, in a deterministic order (a folder's files, then its sub-folders)."""
    ex = {os.path.abspath(e) for e in exclude}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if os.path.abspath(os.path.join(dirpath, d)) not in ex)
        for f in sorted(filenames):
            full = os.path.join(dirpath, f)
            if os.path.abspath(full) not in ex:
                yield full


def count_inputs(root: str, exclude: tuple[str, ...] = ()) -> int:
    """How many Items a folder walk yields (sidecar captions are part of their image's input)."""
    n = 0
    for dirpath, files in itertools.groupby(walk_sorted(root, exclude), key=os.path.dirname):
        names = [os.path.basename(f) for f in files]
        image_stems = {os.path.splitext(f)[0] for f in names if _is_image_name(f)}
        n += sum(1 for f in names if not (f.endswith(".txt") and os.path.splitext(f)[0] in image_stems))
    return n


def _rel(path: str, root: str) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def iter_folder(src: Source, exclude: tuple[str, ...] = ()) -> Iterator[Item]:
    root = src.root
    for full in walk_sorted(root, exclude):
        rel = _rel(full, root)
        name = os.path.basename(full)
        stem, ext = os.path.splitext(full)
        if _is_image_name(name):
            txt = stem + ".txt"
            if not os.path.isfile(txt):
                yield Item(rel, skip=f"no caption (no sidecar {os.path.basename(txt)})")
                continue
            try:
                caps = clean_captions(Path(txt).read_text(encoding="utf-8", errors="replace").splitlines())
            except OSError as e:
                yield Item(rel, skip=f"no caption (cannot read {os.path.basename(txt)}: {e.strerror})")
                continue
            if not caps:
                yield Item(rel, skip=f"no caption (sidecar {os.path.basename(txt)} is blank)")
                continue
            yield Item(rel, captions=caps, path=full)
        elif ext == ".txt":
            if not any(os.path.isfile(stem + e) or os.path.isfile(stem + e.upper()) for e in IMAGE_EXTENSIONS):
                yield Item(rel, skip="caption file without image")
        else:
            yield Item(rel, skip=f"not an image (extension {ext or 'none'!r})")


def _load_jsonl(path: str) -> tuple[dict[str, list[str]], list[Item]]:
    caps: dict[str, list[str]] = {}
    bad: list[Item] = []
    name = os.path.basename(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                file = rec["file"]
                got = rec["captions"] if "captions" in rec else [rec["caption"]]
                if not isinstance(file, str) or not isinstance(got, list):
                    raise TypeError("'file' must be a string and 'captions' a list")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                bad.append(Item(f"{name}:{n}", skip=f"bad captions line ({type(e).__name__}: {e}); expected "
                                                    '{"file": ..., "caption": ...} or "captions": [...]'))
                continue
            caps.setdefault(file, []).extend(clean_captions(got))
    return caps, bad


def iter_jsonl(src: Source, exclude: tuple[str, ...] = ()) -> Iterator[Item]:
    caps, bad = _load_jsonl(src.captions_file)
    yield from bad
    root = src.root
    # Entries may be written relative to the folder or as absolute paths under it.
    by_rel: dict[str, str] = {}
    for file in caps:
        rel = _rel(file, root) if os.path.isabs(file) else Path(file).as_posix().removeprefix("./")
        by_rel.setdefault(rel, file)
    seen: set[str] = set()
    for full in walk_sorted(root, exclude):
        rel = _rel(full, root)
        if rel not in by_rel:
            why = "not an image" if not _is_image_name(full) else f"no caption (not in {os.path.basename(src.captions_file)})"
            yield Item(rel, skip=why)
            continue
        seen.add(rel)
        got = caps[by_rel[rel]]
        if not got:
            yield Item(rel, skip="no caption (blank in captions file)")
        elif not _is_image_name(full):
            yield Item(rel, path=full, captions=got)  # let the decoder decide; it names the reason
        else:
            yield Item(rel, captions=got, path=full)
    for rel in sorted(set(by_rel) - seen):
        file = by_rel[rel]
        if os.path.isabs(file) and os.path.isfile(file):
            yield Item(file, captions=caps[file], path=file) if caps[file] else Item(file, skip="no caption")
        else:
            yield Item(rel, skip=f"file not found (listed in {os.path.basename(src.captions_file)})")


def iter_coco(src: Source) -> Iterator[Item]:
    try:
        with open(src.captions_file, encoding="utf-8") as f:
            coco = json.load(f)
        images = coco["images"]
        anns = coco["annotations"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{src.captions_file} is not a COCO captions file ({type(e).__name__}: {e}); it needs "
                         "'images' and 'annotations' lists") from None
    by_id: dict[int, list[tuple[int, str]]] = {}
    known = {im.get("id") for im in images}
    orphans = []
    for a in anns:
        if a.get("image_id") not in known:
            orphans.append(a)
            continue
        by_id.setdefault(a["image_id"], []).append((a.get("id", 0), a.get("caption", "")))
    json_name = os.path.basename(src.captions_file)
    for im in sorted(images, key=lambda im: (str(im.get("file_name")), str(im.get("id")))):
        rel = str(im.get("file_name"))
        caps = clean_captions(c for _, c in sorted(by_id.get(im.get("id"), [])))
        if not caps:
            yield Item(rel, skip=f"no caption (no annotation in {json_name})")
            continue
        yield Item(rel, captions=caps, path=os.path.join(src.images_dir, rel))
    for a in sorted(orphans, key=lambda a: str(a.get("id"))):
        yield Item(f"{json_name}#annotation-{a.get('id')}", skip=f"annotation for unknown image id {a.get('image_id')}")


def _captions_from_sample(sample: dict[str, bytes]) -> list[str]:
    if "txt" in sample:
        return clean_captions(sample["txt"].decode("utf-8", errors="replace").splitlines())
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except json.JSONDecodeError:
            return []
        if isinstance(meta, dict):
            if isinstance(meta.get("captions"), list):
                return clean_captions(meta["captions"])
            if isinstance(meta.get("caption"), str):
                return clean_captions(meta["caption"].splitlines())
    return []


def _sample_item(shard_name: str, key: str, sample: dict[str, bytes]) -> Item:
    source = f"{shard_name}#{key}"
    img_ext = next((e for e in SHARD_IMAGE_EXTS if e in sample), None)
    if img_ext is None:
        return Item(source, skip=f"no image in sample (has {', '.join(sorted(sample)) or 'nothing'})")
    caps = _captions_from_sample(sample)
    if not caps:
        return Item(source, skip="no caption (no txt, or json without caption)")
    return Item(source, captions=caps, data=sample[img_ext])


def iter_tar(url: str) -> Iterator[Item]:
    """Samples of one tar shard, grouped WebDataset-style (key = member name before the first dot)."""
    name = storage.basename(url)
    key, sample, n = None, {}, 0
    try:
        with storage.open_read(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for m in tar:
                if not m.isreg():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                dirpart = m.name[: len(m.name) - len(base)]
                k, ext = dirpart + base.split(".", 1)[0], base.split(".", 1)[1].lower()
                if k != key:
                    if key is not None:
                        n += 1
                        yield _sample_item(name, key, sample)
                    key, sample = k, {}
                sample[ext] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        yield Item(f"{name}#after-{n}-samples", skip=f"corrupt or truncated shard ({type(e).__name__}: {e})")
        # The sample being read when the shard broke may be incomplete: do not use it.
        if key is not None:
            yield Item(f"{name}#{key}", skip="sample cut by a truncated shard")
        return
    if key is not None:
        yield _sample_item(name, key, sample)


def iter_shards(src: Source) -> Iterator[Item]:
    for url in shard_spec.resolve_shards(src.root):
        yield from iter_tar(url)


def iter_items(src: Source, exclude: tuple[str, ...] = ()) -> Iterator[Item]:
    if src.kind == "folder":
        return iter_folder(src, exclude)
    if src.kind == "jsonl":
        return iter_jsonl(src, exclude + (src.captions_file,))
    if src.kind == "coco":
        return iter_coco(src)
    if src.kind == "shards":
        return iter_shards(src)
    raise AssertionError(src.kind)


__all__ = ["Item", "Source", "detect", "iter_items", "count_inputs", "walk_sorted", "clean_captions"]
