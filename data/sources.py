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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from data import shard_reader, shard_spec, storage, untrusted
from data.images import IMAGE_EXTENSIONS


@dataclass
class Item:
    source: str  # what skipped.jsonl and the sample's json call it (relative to SRC where possible)
    captions: list[str] | None = None
    path: str | None = None  # local file the worker reads
    root: str | None = None  # the folder `path` must stay inside (symlinks are resolved when it is read)
    data: bytes | None = None  # or the bytes themselves (from a tar)
    skip: str | None = None  # already known to be unusable, and why


@dataclass
class Source:
    kind: str  # folder | jsonl | coco | shards
    root: str  # SRC as a folder (or the shard spec)
    captions_file: str | None = None
    images_dir: str | None = None
    max_pixels: int = untrusted.DEFAULT_MAX_IMAGE_PIXELS  # bounds what is read of a shard's image member

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


def count_inputs(root: str, exclude: tuple[str, ...] = ()) -> int:
    """How many Items a folder walk yields (sidecar captions are part of their image's input)."""
    n = 0
    entries = untrusted.walk_local(root, exclude)
    for _, group in itertools.groupby(entries, key=lambda e: e.rel.rpartition("/")[0]):
        group = list(group)
        image_stems = {os.path.splitext(e.rel)[0] for e in group if _is_image_name(e.rel)}
        n += sum(1 for e in group if e.problem or not (e.rel.endswith(".txt") and os.path.splitext(e.rel)[0]
                                                       in image_stems))
    return n


def _sidecar_captions(txt: str, root: str) -> list[str] | str:
    """The captions of a sidecar file, or the reason they cannot be used."""
    name = os.path.basename(txt)
    if not os.path.lexists(txt):
        return f"no caption (no sidecar {name})"
    try:
        data = untrusted.read(txt, root, untrusted.MAX_CAPTION_FILE_BYTES, "caption file")
        caps = untrusted.check_captions(clean_captions(data.decode("utf-8", errors="replace").splitlines()))
    except untrusted.UnsafeInput as e:
        return f"bad caption ({name}: {e})"
    except (OSError, storage.StorageError) as e:
        return f"no caption (cannot read {name}: {e})"
    return caps or f"no caption (sidecar {name} is blank)"


def iter_folder(src: Source, exclude: tuple[str, ...] = ()) -> Iterator[Item]:
    root = src.root
    for entry in untrusted.walk_local(root, exclude):
        rel, full = entry.rel, entry.url
        if entry.problem:
            yield Item(rel, skip=f"not read: {entry.problem}")
            continue
        stem, ext = os.path.splitext(full)
        if _is_image_name(rel):
            caps = _sidecar_captions(stem + ".txt", root)
            yield Item(rel, captions=caps, path=full, root=root) if isinstance(caps, list) else Item(rel, skip=caps)
        elif ext == ".txt":
            if not any(os.path.isfile(stem + e) or os.path.isfile(stem + e.upper()) for e in IMAGE_EXTENSIONS):
                yield Item(rel, skip="caption file without image")
        else:
            yield Item(rel, skip=f"not an image (extension {ext or 'none'!r})")


def caption_lines(f: IO[bytes], name: str) -> Iterator[tuple[str, str, list, str]]:
    """(where, file, captions, problem) for every non-blank line of a captions JSONL stream
    (`{"file": ..., "caption": ...}` or `"captions": [...]`), where = `name:line`. A line that cannot be
    used has its problem set; lines are read bounded (untrusted.lines). Past MAX_BAD_LINE_ROWS unusable
    lines, the rest are only counted, in one last row (a file of garbage must not become a million rows)."""
    bad = 0
    for where, file, got, problem in _caption_lines(f, name):
        if problem:
            bad += 1
            if bad > untrusted.MAX_BAD_LINE_ROWS:
                continue
        yield where, file, got, problem
    if bad > untrusted.MAX_BAD_LINE_ROWS:
        yield (f"{name}:*", "", [], f"bad captions lines: {bad - untrusted.MAX_BAD_LINE_ROWS} more after the "
                                    f"first {untrusted.MAX_BAD_LINE_ROWS} listed")


def _caption_lines(f: IO[bytes], name: str) -> Iterator[tuple[str, str, list, str]]:
    for n, raw in untrusted.lines(f):
        where = f"{name}:{n}"
        if raw is None:
            yield where, "", [], f"bad captions line (longer than {untrusted.MAX_CAPTION_FILE_BYTES} bytes)"
            continue
        line = raw.decode("utf-8", errors="replace")
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            file = rec["file"]
            got = rec["captions"] if "captions" in rec else [rec["caption"]]
            if not isinstance(file, str) or not isinstance(got, list):
                raise TypeError("'file' must be a string and 'captions' a list")
        except (ValueError, KeyError, TypeError, RecursionError) as e:  # RecursionError: [[[[... nested
            yield where, "", [], (f"bad captions line ({type(e).__name__}: {str(e)[:200]}); expected "
                                  '{"file": ..., "caption": ...} or "captions": [...]')
            continue
        yield where, file, got, ""


def listed_rel(file: str, root: str) -> str:
    """A captions file's `file` entry as a path relative to the image folder, local or s3:// (relative,
    `./`-prefixed, or a full path or URL under it); UnsafeInput when it names anything outside."""
    if storage.is_s3(file) or storage.is_s3(root):
        prefix = root.rstrip("/") + "/"
        if storage.is_s3(file) and not file.startswith(prefix):
            raise untrusted.UnsafeInput(f"{file!r} lies outside the image folder")
        file = file.removeprefix(prefix)
    elif os.path.isabs(file):
        if not (os.path.abspath(file) + os.sep).startswith(os.path.abspath(root).rstrip(os.sep) + os.sep):
            raise untrusted.UnsafeInput(f"{file!r} lies outside the image folder")
        file = os.path.relpath(os.path.abspath(file), os.path.abspath(root))
    return untrusted.safe_rel(file.removeprefix("./"), "'file'")


def iter_jsonl(src: Source, exclude: tuple[str, ...] = ()) -> Iterator[Item]:
    """The folder's files with their captions from the JSONL. The folder is listed first, so only captions of
    files that exist are kept; unusable lines and entries naming anything else (outside the folder, missing)
    are rows, the first untrusted.MAX_BAD_LINE_ROWS of each kind one by one and the rest counted."""
    root = src.root
    name = os.path.basename(src.captions_file)
    entries = list(untrusted.walk_local(root, exclude))
    present = {e.rel for e in entries if not e.problem}
    caps: dict[str, list[str]] = {}
    outside, missing = untrusted.Capped(), untrusted.Capped()
    with open(src.captions_file, "rb") as f:
        for where, file, got, problem in caption_lines(f, name):
            if problem:
                yield Item(where, skip=problem)
                continue
            try:
                rel = listed_rel(file, root)
            except untrusted.UnsafeInput as e:
                outside.add(Item(untrusted.printable(file), skip=f"not read: {e} (listed in {name})"))
                continue
            if rel in present:
                caps.setdefault(rel, []).extend(clean_captions(got))
            else:
                missing.add(Item(rel, skip=f"file not found (listed in {name})"))
    yield from outside.rows
    if outside.more:
        yield Item(f"{name}:*", skip=f"not read: {outside.more} more entries outside the image folder")
    for entry in entries:
        rel, full = entry.rel, entry.url
        if entry.problem:
            yield Item(rel, skip=f"not read: {entry.problem}")
            continue
        if rel not in caps:
            why = "not an image" if not _is_image_name(full) else f"no caption (not in {name})"
            yield Item(rel, skip=why)
            continue
        got = caps[rel]
        if not got:
            yield Item(rel, skip="no caption (blank in captions file)")
            continue
        try:
            untrusted.check_captions(got)
        except untrusted.UnsafeInput as e:
            yield Item(rel, skip=f"bad caption ({e})")
            continue
        # Not an image by name: let the decoder decide; it names the reason.
        yield Item(rel, captions=got, path=full, root=root)
    yield from missing.rows
    if missing.more:
        yield Item(f"{name}:*", skip=f"file not found: {missing.more} more entries name no file in the folder")


def iter_coco(src: Source) -> Iterator[Item]:
    size = os.path.getsize(src.captions_file)
    if size > untrusted.MAX_JSON_BYTES:
        raise ValueError(f"{src.captions_file} is {size / 1e9:.1f} GB; a COCO captions file is parsed whole and "
                         f"may be at most {untrusted.MAX_JSON_BYTES / 1e9:.1f} GB: split it, or convert it to "
                         "JSONL and pass that with --captions")
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
        try:
            untrusted.safe_rel(rel, "file_name")
            untrusted.check_captions(caps)
        except untrusted.UnsafeInput as e:
            yield Item(rel, skip=f"not read: {e}")
            continue
        yield Item(rel, captions=caps, path=os.path.join(src.images_dir, rel), root=src.images_dir)
    for a in sorted(orphans, key=lambda a: str(a.get("id"))):
        yield Item(f"{json_name}#annotation-{a.get('id')}", skip=f"annotation for unknown image id {a.get('image_id')}")


def _captions_from_sample(sample: dict[str, bytes]) -> list[str]:
    if "txt" in sample:
        return clean_captions(sample["txt"].decode("utf-8", errors="replace").splitlines())
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond Python's stack
            return []
        if isinstance(meta, dict):
            if isinstance(meta.get("captions"), list):
                return clean_captions(meta["captions"])
            if isinstance(meta.get("caption"), str):
                return clean_captions(meta["caption"].splitlines())
    return []


def _too_large(o: shard_reader.Oversized) -> str:
    what = f"member {o.member} is {o.size} bytes" if not o.by_sample else "sample's members add up to more"
    hint = " (--max-image-pixels raises it)" if o.ext in shard_reader.IMAGE_EXTS else ""
    return f"too large: {what}; the limit is {o.limit}{hint}"


def _sample_item(shard_name: str, sample: shard_reader.Sample) -> Item:
    source = f"{shard_name}#{sample.key}"
    if sample.oversized:
        return Item(source, skip=_too_large(sample.oversized))
    members = sample.members
    img_ext = next((e for e in shard_reader.IMAGE_EXTS if e in members), None)
    if img_ext is None:
        return Item(source, skip=f"no image in sample (has {', '.join(sorted(members)) or 'nothing'})")
    caps = _captions_from_sample(members)
    if not caps:
        return Item(source, skip="no caption (no txt, or json without caption)")
    try:
        untrusted.check_captions(caps)
    except untrusted.UnsafeInput as e:
        return Item(source, skip=f"bad caption ({e})")
    return Item(source, captions=caps, data=members[img_ext])


def iter_tar(url: str, max_pixels: int = untrusted.DEFAULT_MAX_IMAGE_PIXELS) -> Iterator[Item]:
    """Samples of one tar shard (data.shard_reader): its images, txt and json members, each within its limit
    and the sample within the sum of them. A shard that cannot be read to its end gives the samples before
    the damage, then a row saying where and why, and one for the sample it cut."""
    name = storage.basename(url)
    max_image = untrusted.max_image_bytes(max_pixels)
    reader = shard_reader.ShardReader((*shard_reader.IMAGE_EXTS, "txt", "json"), max_image,
                                      max_sample_bytes=max_image + 2 * untrusted.MAX_TEXT_MEMBER_BYTES)
    n = 0
    try:
        with storage.open_read(url) as f:
            for sample in reader.samples(f):
                n += 1
                yield _sample_item(name, sample)
    except shard_reader.DAMAGE as e:
        yield Item(f"{name}#after-{n}-samples", skip=f"corrupt or truncated shard ({type(e).__name__}: {str(e)[:200]})")
        if reader.cut is not None:
            yield Item(f"{name}#{reader.cut}", skip="sample cut by a truncated shard")


def iter_shards(src: Source) -> Iterator[Item]:
    refused: list[tuple[str, str]] = []
    urls = shard_spec.resolve_shards(src.root, refused=refused)
    for where, why in refused:
        yield Item(where, skip=f"not read: {why}")
    for url in urls:
        yield from iter_tar(url, src.max_pixels)


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


__all__ = ["Item", "Source", "detect", "iter_items", "count_inputs", "clean_captions", "listed_rel",
           "caption_lines"]
