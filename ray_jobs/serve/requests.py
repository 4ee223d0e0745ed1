"""One inpainting request, checked: the form of `POST /v1/inpaint` -> a `Job` the replica can batch, or a
`RequestError` naming the field that is wrong. Pure (no Ray, no FastAPI): the rules are the batch job's
(ray_jobs.inpaint_inputs, data/untrusted.py), so one image gives the same hole, window and samples here and
in `python -m ray_jobs.inpaint`."""

from __future__ import annotations

import dataclasses
import json
import posixpath
import shlex
from dataclasses import dataclass

import numpy as np

from data import untrusted
from data.images import FORMATS, ImageSkip, pixel_limit
from onade.config import NUM_CHANNELS, ConfigError, SampleConfig
from ray_jobs.cli import SAMPLER_FLAGS
from ray_jobs.inpaint_inputs import decode_input, find_hole, fit_window, image_seeds

# The batch job's sampler flags, as form fields; precision is the server's (it follows the replica's device).
SAMPLER_FIELDS = tuple(f for f in SAMPLER_FLAGS if f != "precision")
FIELDS = ("image", "mask", "hole", "caption", "seed", "samples", "format", "output", "feather", *SAMPLER_FIELDS)
OUTPUTS = ("json", "image")
MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}


class RequestError(Exception):
    """A request the server will not run: an HTTP status, the form field at fault and why."""

    def __init__(self, field: str, message: str, status: int = 400):
        super().__init__(message)
        self.field, self.message, self.status = field, message, status

    def to_json(self) -> dict:
        return {"error": self.message, "field": self.field, "status": self.status}


@dataclass
class Job:
    """A checked request: the decoded image, its hole and window, and everything the sampler needs."""
    name: str  # the upload's file name: keys the seeds as a relative path keys the batch job's
    source_HWC: np.ndarray
    hidden_HW: np.ndarray
    window: object  # onade.holes.Window
    image_SSC: np.ndarray  # the model's view of the window
    hidden_SS: np.ndarray
    caption: str
    sample: SampleConfig
    samples: int
    seed: int
    format: str
    output: str
    feather: int
    hole: str  # the hole spec, or "mask" when a mask image gave it

    @property
    def seeds(self) -> list[int]:
        return image_seeds(self.seed, self.name, self.samples)

    @property
    def group(self) -> tuple:
        """Requests batch together only when they sample alike: same settings, same model window size."""
        return json.dumps(dataclasses.asdict(self.sample), sort_keys=True), self.image_SSC.shape

    def passes(self) -> int:
        from onade.sampling import planned_passes

        return planned_passes(self.sample, NUM_CHANNELS * int(self.hidden_SS.sum()))

    def record(self) -> dict:
        h, w = self.hidden_HW.shape
        return {"name": self.name, "image_size": [w, h], "hole": self.hole, "hole_pixels": int(self.hidden_HW.sum()),
                "window": self.window.to_json(), "caption": self.caption, "samples": self.samples, "seed": self.seed,
                "seeds": self.seeds, "format": self.format}

    def command(self, checkpoint: str) -> str:
        """The batch job's command line that applies these settings to a folder (the masks, when a mask gave
        the hole, in a folder of PNGs at the images' paths; captions as <stem>.txt beside each image)."""
        argv = ["python", "-m", "ray_jobs.inpaint", "--checkpoint", checkpoint, "--input", "photos/",
                "--output", "inpainted/", "--mask", "masks/" if self.hole == "mask" else self.hole,
                "--seed", str(self.seed), "--samples", str(self.samples), "--format", self.format]
        if self.feather:
            argv += ["--feather", str(self.feather)]
        defaults = SampleConfig()
        for name in SAMPLER_FIELDS:
            value = getattr(self.sample, name)
            if value != getattr(defaults, name):
                argv += [f"--{name.replace('_', '-')}", str(value)]
        return shlex.join(argv)


def parse(form: dict, image: tuple[str, bytes] | None, mask: bytes | None, *, image_size: int, max_pixels: int,
          max_samples: int, max_steps: int, defaults: SampleConfig) -> Job:
    """`form`: the text fields {name: value}; `image`: (file name, bytes); `mask`: a mask image's bytes or None.
    The image's pixels are checked against max_pixels from its header, before it is decoded."""
    unknown = sorted(set(form) - set(FIELDS))
    if unknown:
        raise RequestError(unknown[0], f"unknown field {unknown[0]!r}; the fields are {list(FIELDS)}")
    if image is None or not image[1]:
        raise RequestError("image", "no image: send the image file as the multipart field 'image'")
    name = _file_name(image[0])
    max_bytes = untrusted.max_image_bytes(max_pixels)
    for field, data in (("image", image[1]), ("mask", mask)):
        if data is not None and len(data) > max_bytes:
            raise RequestError(field, f"{field} file is {len(data):,} bytes; at most {max_bytes:,} for the "
                                      f"{max_pixels:,}-pixel limit", 413)
    caption = form.get("caption", "")
    try:
        untrusted.check_captions([caption])
    except ValueError as e:
        raise RequestError("caption", str(e)) from None
    sample = _sample_config(form, defaults, max_steps)
    samples = _int(form, "samples", 1, 1, max_samples)
    seed = _int(form, "seed", 0, 0, 2 ** 63 - 1)
    feather = _int(form, "feather", 0, 0, 10_000)
    fmt = form.get("format", "png")
    if fmt not in FORMATS:
        raise RequestError("format", f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    output = form.get("output", "json")
    if output not in OUTPUTS:
        raise RequestError("output", f"output must be one of {list(OUTPUTS)}, got {output!r}")
    if output == "image" and samples != 1:
        raise RequestError("output", "output=image returns one image: ask for samples=1, or output=json")

    try:
        with pixel_limit(max_pixels):
            source_HWC, rgb_HWC = decode_input(image[1])
    except ImageSkip as e:
        raise RequestError("image", str(e), 413 if "too large" in str(e) else 400) from None
    h, w = rgb_HWC.shape[:2]
    hole = "mask" if mask is not None else form.get("hole", "center")
    if mask is not None and "hole" in form:
        raise RequestError("hole", "give the hole as a mask image or as a hole spec, not both")
    field = "mask" if mask is not None else "hole"
    try:
        hidden_HW = find_hole(mask, hole, (w, h), name)
        window = fit_window(hidden_HW, "context", image_size)
    except (ImageSkip, ValueError) as e:
        raise RequestError(field, str(e)) from None
    image_SSC, hidden_SS = window.to_model(rgb_HWC, hidden_HW)
    return Job(name, source_HWC, hidden_HW, window, image_SSC, hidden_SS, caption, sample, samples, seed, fmt,
               output, feather, hole)


def _file_name(name: str) -> str:
    """The upload's base name, printable and bounded: it only keys the seeds, it never names a file here."""
    base = posixpath.basename(str(name or "").replace("\\", "/")) or "image"
    return untrusted.printable(base)[:untrusted.MAX_NAME_BYTES]


def _int(form: dict, field: str, default: int, low: int, high: int) -> int:
    raw = form.get(field)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RequestError(field, f"{field} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise RequestError(field, f"{field} must be between {low} and {high}, got {value}")
    return value


def _sample_config(form: dict, defaults: SampleConfig, max_steps: int) -> SampleConfig:
    kinds = {f.name: f.type for f in dataclasses.fields(SampleConfig)}
    given = {}
    for field in SAMPLER_FIELDS:
        raw = form.get(field)
        if raw in (None, ""):
            continue
        kind = kinds[field]
        try:
            given[field] = raw if kind == "str" else int(raw) if kind == "int" else float(raw)
        except ValueError:
            raise RequestError(field, f"{field} must be a number, got {raw!r}") from None
    try:
        sample = dataclasses.replace(defaults, **given).validate()
    except ConfigError as e:
        message = str(e)
        named = [f for f in given if f in message]  # ConfigError names the key
        raise RequestError(named[0] if named else "settings", message) from None
    if sample.steps > max_steps:
        raise RequestError("steps", f"steps must be at most {max_steps} on this server, got {sample.steps}")
    if sample.steps == 0:
        raise RequestError("steps", "steps must be > 0 here (0 means one pass per subpixel: too long for a request)")
    return sample


def batch_rows(jobs: list[Job], tokenizer, max_tokens: int):
    """The model inputs of one onade.inpaint run over `jobs`, each repeated for its samples: (x_BSSC uint8,
    observed_BSSC, tokens_BT, lengths_B, seeds), rows in the jobs' order."""
    import torch

    rows = [j for j in jobs for _ in range(j.samples)]
    x = torch.from_numpy(np.stack([j.image_SSC for j in rows]))
    hidden = torch.from_numpy(np.stack([j.hidden_SS for j in rows]))
    observed = ~hidden[..., None].expand(-1, -1, -1, NUM_CHANNELS)
    tokens, lengths = tokenizer.encode_batch([j.caption for j in rows], max_tokens)
    return x, observed, tokens, lengths, [s for j in jobs for s in j.seeds]


__all__ = ["Job", "RequestError", "parse", "batch_rows", "FIELDS", "SAMPLER_FIELDS", "MEDIA_TYPES"]
