"""The inpainting job's inputs (see ray_jobs.inpaint for how to run it): its options, listing the input and
mask folders and a --captions file, and reading one input.

`prepare` turns an input's bytes (and its mask PNG's) into the decoded image, its hole in image coordinates
and the window the model sees (onade.holes). The decode stage (`decode_batch`, Ray Data tasks on CPUs) runs
it to make the model-size window; the write stage (ray_jobs.outputs) runs it again on the same bytes, checked
by digest, to paste the sample back at full resolution. Decoding twice keeps full-size images out of the
object store and off the model actors. An input that cannot be used becomes a row with `error` set, never
an exception.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from data import storage, untrusted
from data.images import ImageSkip, has_alpha, open_upright, pixel_limit, to_rgb
from data.images import upright_size as upright_size_of

FITS = ("context", "crop")


@dataclass
class JobOptions:
    """Everything a stage needs to know about the job (plain values: it is shipped to every worker)."""
    checkpoint: str
    output: str
    image_size: int
    input: str = ""  # the input root: nothing outside it is read
    mask: str = "center"  # an onade.holes.HoleSpec string, or "dir" (each row then names its mask file)
    mask_dir: str = ""  # with mask="dir": the mask root, nothing outside it is read
    fit: str = "context"  # "context": a window around the hole, pasted back; "crop": the centre square
    format: str = "png"  # of the full-size results and masked previews
    feather: int = 0  # pixels inside the hole's edge over which the sample is blended in
    max_pixels: int = untrusted.DEFAULT_MAX_IMAGE_PIXELS
    # Every sampler setting: dataclasses.asdict of the job's onade.config.SampleConfig (plain values to ship;
    # fields left out take SampleConfig's defaults). Kept as a dict so the decode tasks never import torch.
    sample: dict = field(default_factory=dict)
    samples: int = 1
    seed: int = 0
    animate: bool = False
    frames: int = 40  # frames of an animation
    threads: int = 0  # torch threads in an actor on CPU (0 = torch's default)
    max_forward_batch: int = 0  # rows per forward pass (a guided example is two); 0 = from free memory
    reference: bool = False  # the holes hold the true content: score its texture beside the samples'

    def sample_config(self):
        """The job's onade.config.SampleConfig, validated."""
        from onade.config import SampleConfig

        return SampleConfig(**self.sample).validate()

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """Of every setting an output depends on: a resume redoes an input whose outputs were made otherwise
        (another --mask, --fit, --seed, sampler, checkpoint...)."""
        keys = ("checkpoint", "image_size", "mask", "mask_dir", "fit", "format", "feather", "sample", "samples",
                "seed", "animate", "frames")
        settings = {k: v for k, v in asdict(self).items() if k in keys}
        return hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=8).hexdigest()


def image_seeds(seed: int, rel: str, samples: int) -> list[int]:
    """The seed of each sample of the input at relative path `rel`: a function of (--seed, rel, sample index)
    alone, so an image gets the same samples whatever batch, worker or run it lands in."""
    from onade.holes import key_seed

    return [key_seed(seed, f"{rel}\0{k}") >> 1 for k in range(samples)]


def input_digest(data: bytes, mask_data: bytes | None) -> str:
    """Of an input's bytes and its mask's: the write stage checks it reads what the decode stage read."""
    return "/".join(hashlib.blake2b(d, digest_size=16).hexdigest() for d in (data, mask_data) if d is not None)


@dataclass
class Prepared:
    source_HWC: np.ndarray  # the decoded input, upright, 8-bit RGB (RGBA when it has transparency)
    rgb_HWC: np.ndarray  # what the model reads: transparency composited on data.images.BACKGROUND
    hidden_HW: np.ndarray  # the hole (True = inpaint)
    window: object  # onade.holes.Window

    def record(self, fit: str) -> dict:
        """How the input was fitted to the model (a results.jsonl field)."""
        h, w = self.hidden_HW.shape
        return {"fit": fit, "image_size": [w, h], "hole_pixels": int(self.hidden_HW.sum()),
                "window": self.window.to_json()}


def prepare(data: bytes, mask_data: bytes | None, rel: str, o: JobOptions) -> Prepared:
    """Decode an input and find its hole and window; raises ImageSkip (or ValueError) saying why it cannot
    be inpainted. Call inside data.images.pixel_limit(o.max_pixels)."""
    source_HWC, rgb_HWC = decode_input(data)
    hidden_HW = find_hole(mask_data, o.mask, rgb_HWC.shape[1::-1], rel)
    return Prepared(source_HWC, rgb_HWC, hidden_HW, fit_window(hidden_HW, o.fit, o.image_size))


def decode_input(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """An input's bytes -> (the decoded image upright, 8-bit RGB or RGBA when it has transparency; what the
    model reads, transparency composited on data.images.BACKGROUND). Raises ImageSkip."""
    img, _, _ = open_upright(data)
    rgb_HWC = np.asarray(to_rgb(img), dtype=np.uint8)
    source_HWC = np.asarray(img.convert("RGBA"), dtype=np.uint8) if has_alpha(img) else rgb_HWC
    return source_HWC, rgb_HWC


def find_hole(mask_data: bytes | None, spec: str, image_size: tuple[int, int], rel: str) -> np.ndarray:
    """The hole (True = inpaint) of an image of upright size (w, h): from its mask PNG, else from the
    onade.holes.HoleSpec string `spec` (keyed by `rel` for random boxes). Raises ImageSkip or ValueError."""
    from onade.holes import HoleSpec

    if mask_data is None:
        hidden_HW = HoleSpec.parse(spec).hidden(*image_size, key=rel)
    else:
        hidden_HW = hole_from_png(mask_data, image_size)
    if not hidden_HW.any():
        raise ImageSkip("the mask hides nothing (white = hide)")
    return hidden_HW


def fit_window(hidden_HW: np.ndarray, fit: str, image_size: int):
    """The onade.holes.Window the model sees of an image with this hole (see FITS). Raises ImageSkip or
    ValueError (a hole longer than the image's shorter side)."""
    from onade.holes import centre_window, context_window

    if fit == "context":
        return context_window(hidden_HW, image_size)
    h, w = hidden_HW.shape
    window = centre_window(w, h, image_size)
    left, top, right, bottom = window.box
    if not hidden_HW[top:bottom, left:right].any():
        raise ImageSkip("the hole lies outside the centre square that --fit crop inpaints; use --fit context")
    return window


def hole_from_png(data: bytes, image_size: tuple[int, int]) -> np.ndarray:
    """A mask image (white = hide) of the image's upright size (w, h) -> bool [H, W]. Its size is checked from
    the header before anything is decoded (reading a PNG's EXIF orientation may decode it)."""
    from PIL import Image, ImageOps

    def wrong(w: int, h: int) -> ImageSkip:
        return ImageSkip(f"mask is {w}x{h} but the image is {image_size[0]}x{image_size[1]}: a mask must have its "
                         "image's size (after EXIF rotation)")

    try:
        img = Image.open(io.BytesIO(data))
        if img.size not in (image_size, image_size[::-1]):
            raise wrong(*img.size)
        upright = upright_size_of(img)
        if upright != image_size:
            raise wrong(*upright)
        img.load()
        img = ImageOps.exif_transpose(img).convert("L")
    except ImageSkip:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files; all mean "unusable mask"
        raise ImageSkip(f"mask is not a readable image ({type(e).__name__})") from None
    return np.asarray(img) > 127


def read_input(row: dict, o: JobOptions) -> tuple[bytes, bytes | None]:
    """The input's bytes and its mask file's (None without a mask folder), read under their roots' rules."""
    max_bytes = untrusted.max_image_bytes(o.max_pixels)
    data = untrusted.read(str(row["input"]), o.input, max_bytes, "image file", untrusted.IMAGE_SIZE_HINT)
    if o.mask != "dir":
        return data, None
    if not row["mask_url"]:
        raise ImageSkip("no mask file for this image in the mask folder")
    return data, untrusted.read(str(row["mask_url"]), o.mask_dir, max_bytes, "mask file")


def _first_caption(data: bytes) -> str:
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            return untrusted.check_captions([line.strip()])[0]
    return ""


def decode_batch(batch: dict[str, np.ndarray], opts: dict) -> dict[str, np.ndarray]:
    """Rows {input, rel, caption, caption_url, mask_url} -> + {image [S,S,3], hidden [S,S], fit (json),
    digest, error}."""
    o = JobOptions(**opts)
    with pixel_limit(o.max_pixels):  # PIL's limit is per process, and this is a Ray worker's
        return _decode_rows(batch, o)


def _decode_rows(batch: dict[str, np.ndarray], o: JobOptions) -> dict[str, np.ndarray]:
    S = o.image_size
    n = len(batch["input"])
    images = np.zeros((n, S, S, 3), np.uint8)
    hidden = np.zeros((n, S, S), bool)
    fits, digests, errors, captions = [], [], [], []
    for i in range(n):
        row = {k: batch[k][i] for k in batch}
        caption, fit, dig, error = str(row["caption"]), "", "", ""
        try:
            if row["caption_url"]:
                caption = _first_caption(untrusted.read(str(row["caption_url"]), o.input,
                                                        untrusted.MAX_CAPTION_FILE_BYTES, "caption file"))
            data, mask_data = read_input(row, o)
            prepared = prepare(data, mask_data, str(row["rel"]), o)
            images[i], hidden[i] = prepared.window.to_model(prepared.rgb_HWC, prepared.hidden_HW)
            fit = json.dumps(prepared.record(o.fit))
            dig = input_digest(data, mask_data)
        except (ImageSkip, ValueError, storage.StorageError) as e:  # UnsafeInput is a ValueError
            error = str(e)
        except Exception as e:  # noqa: BLE001 - one bad input must not fail the batch of good ones
            error = f"cannot read input: {type(e).__name__}: {e}"
        fits.append(fit)
        digests.append(dig)
        errors.append(error)
        captions.append(caption)
    out = {k: batch[k] for k in ("input", "rel", "mask_url")}
    out.update(image=images, hidden=hidden, fit=np.array(fits, dtype=object), digest=np.array(digests, dtype=object),
               error=np.array(errors, dtype=object), caption=np.array(captions, dtype=object))
    return out


# ---- listing (the driver, before any Ray work) ---------------------------------------------------

def list_tree(root: str) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """Every entry under root (none when root does not exist yet): ({rel: url} of usable files,
    {rel: (url, problem)} of entries that may not be read: unsafe keys, symlinks out of root, FIFOs...)."""
    good, bad = {}, {}
    for e in untrusted.list_inputs(root):
        if e.problem:
            bad[e.rel] = (e.url, e.problem)
        else:
            good[e.rel] = e.url
    return good, bad


def read_captions_jsonl(url: str, input_root: str, wanted: set[str]) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """{rel path: first caption} for the inputs in `wanted`, and (where, reason) for lines that cannot be used.
    Streamed: memory holds one line (at most untrusted.MAX_CAPTION_FILE_BYTES) plus the captions kept."""
    from data.sources import caption_lines, listed_rel

    caps, bad, unsafe = {}, [], untrusted.Capped()
    name = storage.basename(url)
    with storage.open_read(url) as f:
        for where, file, got, problem in caption_lines(f, name):  # unusable lines arrive capped
            if problem:
                bad.append((where, problem))
                continue
            try:
                rel = listed_rel(file, input_root)
                text = next((c.strip() for c in got if isinstance(c, str) and c.strip()), "")
                untrusted.check_captions([text])
            except untrusted.UnsafeInput as e:
                unsafe.add((where, f"captions line not used: {e}"))
                continue
            if rel in wanted:
                caps.setdefault(rel, text)
    bad += unsafe.rows
    if unsafe.more:
        bad.append((f"{name}:*", f"captions lines not used: {unsafe.more} more naming files outside --input or "
                                 "with unusable captions"))
    return caps, bad


def mask_table(mask_dir: str) -> tuple[dict[str, str], dict[str, str]]:
    """{stem: url} of the usable mask files under mask_dir, and {stem: why not} of the others."""
    good, bad = list_tree(mask_dir)
    return ({os.path.splitext(rel)[0]: url for rel, url in good.items()},
            {os.path.splitext(rel)[0]: why for rel, (_, why) in bad.items()})


__all__ = ["FITS", "JobOptions", "Prepared", "prepare", "read_input", "hole_from_png", "image_seeds",
           "input_digest", "decode_batch", "list_tree", "read_captions_jsonl", "mask_table"]
