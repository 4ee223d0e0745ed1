"""The inpainting job's outputs (see ray_jobs.inpaint for how to run it): their names, the write stage,
animations and the gallery.

Per input at relative path `a/photo.jpg`, under --output:
- `a/photo.png` (`a/photo.<k>.png` for sample k > 0 with --samples; --format jpg|webp|png): the input at its
  own size with only the hole inpainted (--fit context), or the model-size centre crop (--fit crop);
- `a/photo.masked.png`: the same view with the hole drawn as a black-and-white checkerboard;
- `a/photo.thumb.jpg`: a strip of small thumbnails (masked, then each sample) for the gallery;
- `a/photo.gif` with --animate: the sampling chain in the model's window, the samples side by side.

`write_batch` (Ray Data tasks on CPUs, after the model actors) reads each input again (checked against the
digest the decode stage took), pastes the samples back, encodes and writes every file whole or not at all,
the first sample last (a resume that finds it finds the rest), and returns one results.jsonl line per input.

The gallery (`write_gallery`, run by the driver at the end) is static HTML at the output root: `index.html`
(page 1), `index-2.html`, ... with PAGE_ROWS rows each. Every page shows the totals over all of results.jsonl
(which holds a row for every input of every run into this output), the caller's summary of this run and page
navigation. A row shows its thumbnail strip (lazy-loaded, so a page fetches only what is on screen) linking
to the full-size samples. Links are relative and percent-encoded, so the pages work from a local folder and
from an S3 static website. results.jsonl is read twice, line by line (totals, then pages): memory does not
grow with the number of rows.
"""

from __future__ import annotations

import dataclasses
import html
import io
import itertools
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from data import storage, untrusted
from data.images import ImageSkip, encode, pixel_limit, to_rgb
from onade.texture import Texture, sample_quality, texture
from ray_jobs.inpaint_inputs import JobOptions, image_seeds, input_digest, prepare, read_input

GIF_FRAME_MS = 80
GIF_HOLD_MS = 1500  # the last frame (the result) stays up before the loop restarts
THUMB_PX = 128  # thumbnail height in the strip
PAGE_ROWS = 200
ROW_IMG_PX = 96  # shown height of a row's picture; explicit so the page does not reflow as lazy images arrive
NAV_WINDOW = 3  # page links either side of the current page; first and last are always linked
CHECKER = (0, 255)  # the hole's checkerboard: black and white squares show on any image
RESULTS = "results.jsonl"  # one line per input, of every run into the output folder
INDEX = "index.html"  # the gallery's first page


@dataclass(frozen=True)
class OutputNames:
    samples: tuple[str, ...]
    masked: str
    thumb: str
    animation: str  # "" without --animate

    @classmethod
    def of(cls, rel: str, opts: JobOptions) -> OutputNames:
        """Output paths, relative to the output root, of the input at relative path `rel`."""
        stem, ext = os.path.splitext(rel)[0], opts.format
        samples = (f"{stem}.{ext}",) + tuple(f"{stem}.{k}.{ext}" for k in range(1, opts.samples))
        return cls(samples, f"{stem}.masked.{ext}", f"{stem}.thumb.jpg", f"{stem}.gif" if opts.animate else "")

    def all(self) -> list[str]:
        return [*self.samples, self.masked, self.thumb] + ([self.animation] if self.animation else [])

    def files(self) -> dict:
        return {"samples": list(self.samples), "masked": self.masked, "thumb": self.thumb,
                "animation": self.animation}


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[:i + 1]) for i in range(len(parts))]


class OutputClaims:
    """The output paths inputs have claimed. Two inputs must not write the same path: `a.png` and `a.jpg` both
    make `a.png`; the `a.masked.png` of `a.png` is the output of an input named `a.masked.png`; `a.png/x.png`
    needs a folder where `a.jpg` writes a file; names differing in case collide on some disks. The job's own
    files are claimed first."""

    def __init__(self):
        self.owners = {RESULTS: ("file", "the job's results"), INDEX: ("file", "the job's gallery")}

    def clash(self, names: list[str]) -> str:
        """Why these output paths cannot be written beside those already claimed ("" if they can)."""
        for o in names:
            try:
                untrusted.safe_rel(o, "output")
            except untrusted.UnsafeInput as e:
                return str(e)
            if o.casefold() in self.owners:
                return f"its output {o} is already that of {self.owners[o.casefold()][1]}; rename one of the two"
            for folder in _parents(o):
                kind, owner = self.owners.get(folder.casefold(), ("folder", ""))
                if kind == "file":
                    return f"its output {o} needs a folder {folder}, already a file of {owner}; rename one of the two"
        return ""

    def claim(self, names: list[str], rel: str) -> None:
        for o in names:
            self.owners[o.casefold()] = ("file", rel)
            for folder in _parents(o):
                self.owners.setdefault(folder.casefold(), ("folder", rel))


def gif_bytes(frames_FKHWC: np.ndarray) -> bytes:
    """An animated GIF of a chain [F,K,H,W,3]: the K samples side by side, one frame per recorded state."""
    from PIL import Image

    F, K, H, W, C = frames_FKHWC.shape
    tiles = frames_FKHWC.transpose(0, 2, 1, 3, 4).reshape(F, H, K * W, C)
    images = [Image.fromarray(np.ascontiguousarray(t)) for t in tiles]
    buf = io.BytesIO()
    durations = [GIF_FRAME_MS] * (F - 1) + [GIF_HOLD_MS]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0,
                   optimize=False)
    return buf.getvalue()


def checkerboard(image_HWC: np.ndarray, hidden_HW: np.ndarray) -> np.ndarray:
    """The image (RGB) with its hole drawn as a checkerboard of squares about 1/32 of the shorter side."""
    h, w = hidden_HW.shape
    cell = max(2, min(w, h) // 32)
    ys, xs = np.ogrid[:h, :w]
    board_HW = np.where(((ys // cell) + (xs // cell)) % 2 == 0, *CHECKER).astype(np.uint8)
    return np.where(hidden_HW[..., None], board_HW[..., None], image_HWC[..., :3]).astype(np.uint8)


def encode_image(image_HWC: np.ndarray, fmt: str) -> bytes:
    """PNG and (lossless) WebP keep every byte and an alpha channel; JPEG gets alpha composited on white."""
    from PIL import Image

    img = Image.fromarray(image_HWC)
    return encode(to_rgb(img) if fmt == "jpg" else img, fmt)


def thumb(image_HWC: np.ndarray):
    """A PIL image THUMB_PX high (at most 4 times as wide: a panorama is squeezed, not a 65,535 px JPEG); an
    RGBA image is composited on white first, as the masked view and JPEG outputs are (its hidden RGB under
    alpha 0 is not shown)."""
    from PIL import Image

    h, w = image_HWC.shape[:2]
    size = (min(4 * THUMB_PX, max(1, round(w * THUMB_PX / h))), THUMB_PX)
    return to_rgb(Image.fromarray(np.ascontiguousarray(image_HWC))).resize(size, Image.Resampling.BICUBIC)


def thumb_strip(tiles: list) -> bytes:
    """Thumbnails (`thumb`) side by side, as one JPEG."""
    from PIL import Image

    strip = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), THUMB_PX), (255, 255, 255))
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width + 4
    buf = io.BytesIO()
    strip.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def sampler_fields(sample, forward_passes: int = 0) -> dict:
    """What every results line records of the sampler: the settings as configured (steps 0 = the strategy's
    per-subpixel default) and the forward passes that inpainted the input (0 when none did)."""
    return {"strategy": sample.strategy, "steps": sample.steps, "guidance": sample.guidance,
            "temperature": sample.temperature, "top_p": sample.top_p, "channels": sample.channels,
            "forward_passes": forward_passes}


def error_record(row: dict, error: str, sample, **extra) -> dict:
    return {"input": str(row.get("input", "")), "rel": str(row.get("rel", "")), "outputs": [],
            "caption": str(row.get("caption", "")), **sampler_fields(sample), **extra, "status": "error",
            "error": error}


def write_batch(batch: dict[str, np.ndarray], opts: dict) -> dict[str, np.ndarray]:
    """Rows from the model actors -> {"record": one results.jsonl line per input}."""
    o = JobOptions(**opts)
    sample, settings = o.sample_config(), o.fingerprint()
    rows = []
    with pixel_limit(o.max_pixels):
        for i in range(len(batch["input"])):
            row = {k: batch[k][i] for k in batch}
            rows.append(json.dumps(_write_one(row, o, sample, settings), ensure_ascii=False))
    return {"record": np.array(rows, dtype=object)}


def _write_one(row: dict, o: JobOptions, sample, settings: str) -> dict:
    if row["error"]:
        return error_record(row, str(row["error"]), sample, settings=settings)
    start = time.perf_counter()
    rel = str(row["rel"])
    try:
        names = OutputNames.of(rel, o)
        blobs, quality = _encode_outputs(row, o, rel)
        files = names.all()
        if names.animation:
            blobs.append(bytes(row["gif"]))
        assert len(blobs) == len(files)
        # Every name passed untrusted.safe_rel when the work was selected; write_output checks each again.
        for name, blob in list(zip(files, blobs))[1:] + [(files[0], blobs[0])]:
            untrusted.write_output(o.output, name, blob)
    except (ImageSkip, ValueError, OSError, storage.StorageError) as e:  # UnsafeInput is a ValueError
        return error_record(row, f"cannot write outputs: {e}", sample, settings=settings)
    except Exception as e:  # noqa: BLE001 - one input must not fail its batch (MemoryError on a huge one...)
        return error_record(row, f"cannot write outputs: {type(e).__name__}: {e}", sample, settings=settings)
    fit = json.loads(str(row["fit"]))
    return {"input": str(row["input"]), "rel": rel, "outputs": files, "files": names.files(),
            "caption": str(row["caption"]), **sampler_fields(sample, int(row["forward_passes"])),
            "precision": str(row["precision"]), "samples": o.samples, "seeds": image_seeds(o.seed, rel, o.samples),
            **fit, "format": o.format, "settings": settings, **quality,
            "seconds": round(float(row["actor_seconds"]), 4), "model_seconds": round(float(row["model_seconds"]), 4),
            "write_seconds": round(time.perf_counter() - start, 4), "status": "ok"}


def _encode_outputs(row: dict, o: JobOptions, rel: str) -> tuple[list[bytes], dict]:
    """[each sample, masked view, thumbnail strip] encoded, one full-size image held at a time; and the
    texture sums (onade.texture) of the samples' holes at the output's size, with --reference the input's."""
    if o.fit == "context":
        data, mask_data = read_input(row, o)
        if input_digest(data, mask_data) != row["digest"]:
            raise ImageSkip("the input (or its mask) changed while the job ran; run the job again")
        prepared = prepare(data, mask_data, rel, o)
        del data, mask_data
        original, hidden = prepared.rgb_HWC, prepared.hidden_HW
        results = (prepared.window.paste(prepared.source_HWC, prepared.hidden_HW, s, o.feather)
                   for s in row["samples"])
    else:  # the outputs are the model's window itself, as the decode stage made it: nothing to read again
        original, hidden = row["image"], row["hidden"]
        results = iter(row["samples"])
    masked = checkerboard(original, hidden)
    blobs, thumbs, sums = [], [thumb(masked)], Texture()
    for result in results:
        blobs.append(encode_image(result, o.format))
        thumbs.append(thumb(result))
        sums = sums + texture(result, hidden)
    quality = {"texture": dataclasses.asdict(sums)}
    if o.reference:
        quality["reference_texture"] = dataclasses.asdict(texture(original, hidden))
    return blobs + [encode_image(masked, o.format), thumb_strip(thumbs)], quality


# ---- the gallery ------------------------------------------------------------------------------------

def href(path: str) -> str:
    """A relative output path as an attribute value: percent-encoded first (a `#`, `?` or `%` in a file name
    would otherwise end or change the URL), then HTML-escaped."""
    return html.escape(urllib.parse.quote(path, safe="/"), quote=True)


def page_name(page: int) -> str:
    """The file name of gallery page `page` (1-based)."""
    return INDEX if page == 1 else f"index-{page}.html"


def read_records(path: str) -> Iterator[dict]:
    """results.jsonl rows from a local file, one at a time. Blank lines, lines that are not a JSON object
    (a run killed mid-write leaves half a line) and bytes that are not UTF-8 are skipped, not fatal: the
    gallery shows what can be read."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec


def row_texture(rec: dict, key: str = "texture"):
    """A row's onade.texture.Texture sums under `key` ("texture": its samples', "reference_texture": its
    input's hole), or None when the row has none (an error row, a row from before they were recorded)."""
    sums = rec.get(key)
    fields = [f.name for f in dataclasses.fields(Texture)]
    if not isinstance(sums, dict) or not all(isinstance(sums.get(f), (int, float)) for f in fields):
        return None
    return Texture(**{f: sums[f] for f in fields})


def texture_text(samples, reference=None) -> str:
    """Hole roughness and speck rate of the samples, beside the reference's (and the ratio) when given."""
    if samples is None or not samples.pixels:
        return ""
    q = sample_quality(samples, reference)
    text = f"hole roughness {q['hole_roughness']:.1f}, specks {100 * q['speck_rate']:.2f}%"
    if reference is not None and reference.pixels:
        text += (f" (reference {q['hole_roughness_originals']:.1f}, x{q['roughness_ratio']:.2f}; "
                 f"specks {100 * q['speck_rate_originals']:.2f}%)")
    return text


@dataclasses.dataclass
class Totals:
    """Counts over every row of results.jsonl (`resumed` rows were done by an earlier run), and the texture
    sums of the rows that have them (onade.texture): every sample's, and the references' where recorded."""
    rows: int = 0
    done_now: int = 0
    done_before: int = 0
    failed: int = 0
    samples: Texture = dataclasses.field(default_factory=Texture)
    reference: Texture = dataclasses.field(default_factory=Texture)

    def add(self, rec: dict) -> None:
        self.rows += 1
        if rec.get("status") != "ok":
            self.failed += 1
            return
        if rec.get("resumed"):
            self.done_before += 1
        else:
            self.done_now += 1
        samples, reference = row_texture(rec), row_texture(rec, "reference_texture")
        if samples is not None:
            self.samples += samples
            if reference is not None:
                self.reference += reference

    def line(self) -> str:
        done = self.done_now + self.done_before
        line = (f"{self.rows:,} inputs: {done:,} done ({self.done_now:,} in this run, {self.done_before:,} skipped "
                f"as done by earlier runs), {self.failed:,} failed")
        fills = texture_text(self.samples, self.reference if self.reference.pixels else None)
        return line + (f". Fills: {fills}" if fills else "")


@dataclasses.dataclass
class RowFiles:
    samples: list[str]
    masked: str = ""
    animation: str = ""
    thumb: str = ""


def _str(v) -> str:
    return v if isinstance(v, str) else ""


def row_files(rec: dict) -> RowFiles:
    """A row's output paths, from `files` or, in rows written before it existed, the flat `outputs` list."""
    files = rec.get("files")
    if isinstance(files, dict):
        samples = files.get("samples")
        return RowFiles([s for s in samples if _str(s)] if isinstance(samples, list) else [],
                        _str(files.get("masked")), _str(files.get("animation")), _str(files.get("thumb")))
    out = RowFiles([])
    outputs = rec.get("outputs")
    for o in outputs if isinstance(outputs, list) else []:
        name = os.path.basename(_str(o))
        if not name or name.endswith(".original.png"):
            continue
        if name.endswith(".thumb.jpg"):
            out.thumb = out.thumb or o
        elif ".masked." in name:
            out.masked = out.masked or o
        elif name.endswith(".gif"):
            out.animation = out.animation or o
        else:
            out.samples.append(o)
    return out


def _size(rec: dict) -> str:
    size = rec.get("image_size")
    if isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return f"{size[0]}x{size[1]}"
    return ""


def _link(path: str, text: str) -> str:
    return f'<a href="{href(path)}">{html.escape(text)}</a>'


def render_row(num: int, rec: dict) -> str:
    """One table row; `num` is the row's 1-based position in results.jsonl."""
    name = html.escape(_str(rec.get("rel")) or _str(rec.get("input")) or "(unnamed)")
    if rec.get("resumed"):
        name += ' <span class="note">(earlier run)</span>'
    caption = html.escape(_str(rec.get("caption")) or "(no caption)")
    head = (f'<tr><td class="num">{num}</td><td class="name">{name}</td><td class="caption">{caption}</td>'
            f"<td>{_size(rec)}</td>")
    files = row_files(rec)
    if rec.get("status") != "ok" or not files.samples:
        error = _str(rec.get("error")) or ("no outputs" if rec.get("status") == "ok" else "failed")
        return f'{head}<td colspan="3" class="error">{html.escape(error)}</td></tr>\n'
    # Rows written before thumbnails existed show the first sample itself (small for this model), lazily.
    picture, cls = (files.thumb, "thumb") if files.thumb else (files.samples[0], "full")
    img = f'<img class="{cls}" src="{href(picture)}" alt="" loading="lazy" decoding="async">'
    links = [_link(s, str(i)) for i, s in enumerate(files.samples, 1)]
    links += [_link(files.masked, "masked")] if files.masked else []
    links += [_link(files.animation, "animation")] if files.animation else []
    fills = html.escape(texture_text(row_texture(rec), row_texture(rec, "reference_texture")))
    return (f'{head}<td><a href="{href(files.samples[0])}">{img}</a></td><td class="links">{" ".join(links)}</td>'
            f'<td class="texture">{fills}</td></tr>\n')


def nav(page: int, num_pages: int) -> str:
    """first/prev, a window of page numbers (with the first and last), next/last: O(NAV_WINDOW) links."""
    if num_pages <= 1:
        return ""

    def to(p: int, text: str) -> str:
        if p == page or not 1 <= p <= num_pages:
            return f'<span class="off">{html.escape(text)}</span>'
        return _link(page_name(p), text)

    shown = sorted({1, num_pages, *range(max(1, page - NAV_WINDOW), min(num_pages, page + NAV_WINDOW) + 1)})
    parts = [to(1, "« first"), to(page - 1, "‹ prev")]
    for prev, p in zip([0, *shown], shown):
        if p - prev > 1:
            parts.append("…")
        parts.append(f"<strong>{p}</strong>" if p == page else _link(page_name(p), str(p)))
    parts += [to(page + 1, "next ›"), to(num_pages, "last »")]
    return f'<nav>{" ".join(parts)}</nav>\n'


_HEAD = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 6px 10px; border-bottom: 1px solid #ddd; vertical-align: middle; text-align: left; }}
img {{ height: {px}px; width: auto; display: block; }}
img.full {{ image-rendering: pixelated; }}
nav {{ margin: 1em 0; }}
nav a, nav strong, nav span {{ margin-right: 0.4em; }}
.off, .note, .num {{ color: #888; }}
.caption {{ max-width: 22em; }}
.name {{ max-width: 18em; overflow-wrap: anywhere; }}
.error {{ color: #a00; }}
.texture {{ max-width: 16em; font-size: 90%; }}
</style></head><body>
<h1>onade inpainting</h1>
<p class="totals">{totals}</p>
"""

_TABLE = ("<table>\n<tr><th>#</th><th>input</th><th>caption</th><th>size</th><th>samples</th><th>full size</th>"
          "<th>hole texture</th></tr>\n")


def _head(totals: Totals, summary: str, page: int, num_pages: int) -> str:
    title = "onade inpainting" + (f" - page {page} of {num_pages}" if num_pages > 1 else "")
    out = _HEAD.format(title=title, px=ROW_IMG_PX, totals=html.escape(totals.line()))
    if summary:
        out += f'<p class="summary">{html.escape(summary)}</p>\n'
    return out


def write_gallery(folder: str, records_path: str, summary: str = "", page_rows: int = PAGE_ROWS) -> list[str]:
    """Write the gallery of the local results.jsonl `records_path` into the local folder `folder`: pages of
    `page_rows` rows. Returns the file names written (index.html first), for the caller to upload."""
    if page_rows < 1:
        raise ValueError(f"page_rows must be at least 1, not {page_rows}")
    totals = Totals()
    for rec in read_records(records_path):
        totals.add(rec)
    num_pages = max(1, -(-totals.rows // page_rows))
    os.makedirs(folder, exist_ok=True)
    rows = enumerate(read_records(records_path), 1)
    names = []
    for page in range(1, num_pages + 1):
        names.append(page_name(page))
        with open(os.path.join(folder, names[-1]), "w", encoding="utf-8") as f:
            f.write(_head(totals, summary, page, num_pages))
            if totals.rows == 0:
                f.write("<p>No inputs yet: results.jsonl has no rows.</p></body></html>\n")
                break
            first, last = (page - 1) * page_rows + 1, min(totals.rows, page * page_rows)
            f.write(nav(page, num_pages) + f"<p>rows {first:,}-{last:,}</p>\n" + _TABLE)
            for num, rec in itertools.islice(rows, page_rows):
                f.write(render_row(num, rec))
            f.write("</table>\n" + nav(page, num_pages) + "</body></html>\n")
    return names


__all__ = ["OutputNames", "gif_bytes", "checkerboard", "encode_image", "thumb", "thumb_strip",
           "write_batch", "sampler_fields",
           "error_record", "href", "page_name", "read_records", "row_files", "Totals", "write_gallery", "THUMB_PX",
           "PAGE_ROWS", "row_texture", "texture_text"]
