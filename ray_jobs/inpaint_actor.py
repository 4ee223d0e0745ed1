"""The two stages of the inpainting job (see ray_jobs.inpaint for how to run it).

`decode_batch` (Ray Data tasks, CPU): read each input, convert it to RGB and fit it to the model size
(centre crop + resize, recorded in `fit`), read its caption and its mask. An input that cannot be used
becomes a row with `error` set, never an exception.

`InpaintActor` (Ray Data actor pool): loads the checkpoint once, inpaints a whole batch with
`onade.inpaint` (every sampler setting from the job's one SampleConfig, `JobOptions.sample`), writes every
output of an input atomically (temp file + rename, or temp key + copy on S3) and returns one small row per
input (no image goes back to the driver).
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from data import storage, untrusted
from data.images import ImageSkip, load, pixel_limit

ORIGINAL_SUFFIX = ".original.png"
MASKED_SUFFIX = ".masked.png"
MASKED_GREY = 127  # how a hidden subpixel looks in `<stem>.masked.png`


@dataclass
class JobOptions:
    """Everything a stage needs to know about the job (plain values: it is shipped to every worker)."""
    checkpoint: str
    output: str
    image_size: int
    input: str = ""  # the input root: nothing outside it is read
    mask: str = "center"  # "center", "box:X,Y,W,H" or "dir" (each row then names its mask file)
    mask_dir: str = ""  # with mask="dir": the mask root, nothing outside it is read
    max_pixels: int = untrusted.DEFAULT_MAX_IMAGE_PIXELS
    # Every sampler setting: dataclasses.asdict of the job's onade.config.SampleConfig (plain values to ship;
    # fields left out take SampleConfig's defaults). Kept as a dict so the decode tasks never import torch.
    sample: dict = field(default_factory=dict)
    samples: int = 1
    seed: int = 0
    animate: bool = False
    frames: int = 40  # frames of an animation
    threads: int = 0  # torch threads in an actor on CPU (0 = torch's default)
    use_gpu: bool = False

    def sample_config(self):
        """The job's onade.config.SampleConfig, validated."""
        from onade.config import SampleConfig

        return SampleConfig(**self.sample).validate()


def sampler_fields(sample, forward_passes: int = 0) -> dict:
    """What every results line records of the sampler: the settings as configured (steps 0 = the strategy's
    per-subpixel default) and the forward passes of the batch that inpainted the input (0 when none did; a
    batch of mask-folder inputs runs as long as its largest hole needs)."""
    return {"strategy": sample.strategy, "steps": sample.steps, "guidance": sample.guidance,
            "forward_passes": forward_passes}


def output_names(rel: str, opts: JobOptions) -> list[str]:
    """Output paths, relative to the output root, of the input at relative path `rel`."""
    stem = os.path.splitext(rel)[0]
    names = [f"{stem}.png"] + [f"{stem}.{k}.png" for k in range(1, opts.samples)]
    names += [stem + ORIGINAL_SUFFIX, stem + MASKED_SUFFIX]
    if opts.animate:
        names.append(f"{stem}.gif")
    return names


def parse_box(spec: str, image_size: int) -> tuple[int, int, int, int]:
    try:
        x, y, w, h = (int(v) for v in spec.split(":", 1)[1].split(","))
    except ValueError:
        raise ValueError(f"--mask {spec!r}: expected box:X,Y,W,H with integers in model pixels "
                         f"(the model sees {image_size}x{image_size})") from None
    if w < 1 or h < 1 or x < 0 or y < 0 or x + w > image_size or y + h > image_size:
        raise ValueError(f"--mask {spec!r}: the box must lie inside the {image_size}x{image_size} image the "
                         "model sees (inputs are centre-cropped and resized to it)")
    return x, y, w, h


def spec_hidden(spec: str, image_size: int) -> np.ndarray:
    """Hidden pixels [H,W] for --mask center or box:X,Y,W,H."""
    hidden = np.zeros((image_size, image_size), bool)
    if spec == "center":
        side = max(1, image_size // 2)
        start = (image_size - side) // 2
        hidden[start:start + side, start:start + side] = True
    else:
        x, y, w, h = parse_box(spec, image_size)
        hidden[y:y + h, x:x + w] = True
    return hidden


def _crop_box(w: int, h: int) -> tuple[int, int, int, int]:
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def _first_caption(data: bytes) -> str:
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            return untrusted.check_captions([line.strip()])[0]
    return ""


def _mask_from_png(data: bytes, upright_size: tuple[int, int], image_size: int) -> np.ndarray:
    """A mask image (white = hide) fitted exactly like its image: same centre crop, nearest resize. Its size
    is checked from the header, before decoding (a mask can be no larger than its image)."""
    from PIL import Image, ImageOps

    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        if img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that swap the sides
            w, h = h, w
        if (w, h) != upright_size:
            raise ImageSkip(f"mask is {w}x{h} but the image is {upright_size[0]}x{upright_size[1]}: masks must "
                            "match their image")
        img.load()
        img = ImageOps.exif_transpose(img).convert("L")
    except ImageSkip:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files; all mean "unusable mask"
        raise ImageSkip(f"mask is not a readable image ({type(e).__name__})") from None
    fitted = img.resize((image_size, image_size), Image.Resampling.NEAREST, box=_crop_box(*upright_size))
    return np.asarray(fitted) > 127


def decode_batch(batch: dict[str, np.ndarray], opts: dict) -> dict[str, np.ndarray]:
    """Rows {input, rel, caption, caption_url, mask_url} -> + {image [S,S,3], hidden [S,S], fit, error}."""
    o = JobOptions(**opts)
    with pixel_limit(o.max_pixels):  # PIL's limit is per process, and this is a Ray worker's
        return _decode_rows(batch, o)


def _decode_rows(batch: dict[str, np.ndarray], o: JobOptions) -> dict[str, np.ndarray]:
    max_bytes = untrusted.max_image_bytes(o.max_pixels)
    S = o.image_size
    n = len(batch["input"])
    images = np.zeros((n, S, S, 3), np.uint8)
    hidden = np.zeros((n, S, S), bool)
    fits, errors, captions = [], [], []
    default_hidden = None if o.mask == "dir" else spec_hidden(o.mask, S)
    for i in range(n):
        caption, fit, error = str(batch["caption"][i]), "", ""
        try:
            if batch["caption_url"][i]:
                caption = _first_caption(untrusted.read(str(batch["caption_url"][i]), o.input,
                                                        untrusted.MAX_CAPTION_FILE_BYTES, "caption file"))
            data = untrusted.read(str(batch["input"][i]), o.input, max_bytes, "image file", untrusted.IMAGE_SIZE_HINT)
            img, (w, h), mode = load(data, S, "crop")
            images[i] = np.asarray(img, dtype=np.uint8)
            fit = json.dumps({"width": w, "height": h, "mode": mode, "crop": _crop_box(w, h),
                              "resize": [S, S]})
            if default_hidden is None:
                mask_url = str(batch["mask_url"][i])
                if not mask_url:
                    raise ImageSkip("no mask file for this image in the mask folder")
                hidden[i] = _mask_from_png(untrusted.read(mask_url, o.mask_dir, max_bytes, "mask file"), (w, h), S)
                if not hidden[i].any():
                    raise ImageSkip("the mask hides nothing (white = hide)")
            else:
                hidden[i] = default_hidden
        except (ImageSkip, storage.StorageError, untrusted.UnsafeInput) as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - one bad input must not fail the batch of good ones
            error = f"cannot read input: {type(e).__name__}: {e}"
        fits.append(fit)
        errors.append(error)
        captions.append(caption)
    out = {k: batch[k] for k in ("input", "rel")}
    out.update(image=images, hidden=hidden, fit=np.array(fits, dtype=object),
               error=np.array(errors, dtype=object), caption=np.array(captions, dtype=object))
    return out


class InpaintActor:
    """One model replica: loads the checkpoint once, then inpaints batches of decoded rows."""

    def __init__(self, opts: dict):
        import torch

        import onade

        self.opts = JobOptions(**opts)
        if self.opts.threads > 0 and not self.opts.use_gpu:
            torch.set_num_threads(self.opts.threads)
        self.device = "cuda" if self.opts.use_gpu and torch.cuda.is_available() else "cpu"
        loaded = onade.load_checkpoint(self.opts.checkpoint, device=self.device)
        self.model, self.tokenizer, self.config = loaded.model, loaded.tokenizer, loaded.config
        self.profile = loaded.profile  # plans the passes of a budgeted ancestral run (None: equal chunks)
        self.sample = self.opts.sample_config()
        self.precision = onade.precision.resolve_precision(self.sample.precision, self.device)
        if self.config.model.image_size != self.opts.image_size:
            raise ValueError(f"checkpoint {self.opts.checkpoint} is for {self.config.model.image_size}px images, "
                             f"the job was planned for {self.opts.image_size}px")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        n = len(batch["input"])
        errors = [str(e) for e in batch["error"]]
        outputs: list[list[str]] = [[] for _ in range(n)]
        good = [i for i in range(n) if not errors[i]]
        passes = 0
        if good:
            try:
                passes, results = self.inpaint([batch["image"][i] for i in good], [batch["hidden"][i] for i in good],
                                              [str(batch["caption"][i]) for i in good])
            except ValueError as e:
                results = None
                for i in good:
                    errors[i] = f"inpainting failed: {e}"
            if results is not None:
                for j, i in enumerate(good):
                    try:
                        outputs[i] = self.write(str(batch["rel"][i]), batch["image"][i], batch["hidden"][i],
                                                *results[j])
                    except (OSError, storage.StorageError, untrusted.UnsafeInput) as e:
                        errors[i] = f"cannot write outputs: {e}"
        seconds = (time.perf_counter() - start) / max(1, n)
        o = self.opts
        rows = []
        for i in range(n):
            row = {"input": str(batch["input"][i]), "outputs": outputs[i] if not errors[i] else [],
                   "caption": str(batch["caption"][i]),
                   **sampler_fields(self.sample, 0 if errors[i] else passes), "precision": self.precision,
                   "samples": o.samples, "seconds": round(seconds, 4), "status": "error" if errors[i] else "ok"}
            if errors[i]:
                row["error"] = errors[i]
            else:
                row["fit"] = json.loads(str(batch["fit"][i]))
            rows.append(json.dumps(row, ensure_ascii=False))
        return {"record": np.array(rows, dtype=object)}

    def inpaint(self, images, hiddens, captions):
        """-> (forward passes, [(samples [K,S,S,3], frames [F,K,S,S,3] or None)] per input)."""
        import torch

        import onade
        from onade.sampling import planned_passes

        o, K = self.opts, self.opts.samples
        x = torch.from_numpy(np.stack(images)).repeat_interleave(K, 0)
        hidden = torch.from_numpy(np.stack(hiddens))[..., None].expand(-1, -1, -1, 3).repeat_interleave(K, 0)
        mask = ~hidden
        tokens, lengths = self.tokenizer.encode_batch(captions, self.config.data.max_tokens)
        tokens, lengths = tokens.repeat_interleave(K, 0), lengths.repeat_interleave(K, 0)
        hole = int(hidden[0].sum()) if o.mask != "dir" else int(hidden.flatten(1).sum(1).max())
        record_every = max(1, planned_passes(self.sample, hole) // o.frames) if o.animate else 0
        stats = {}
        out, chain = onade.inpaint(self.model, x.to(self.device), mask.to(self.device), tokens, lengths,
                                   config=self.sample, seed=o.seed, record_every=record_every,
                                   profile=self.profile, stats=stats)
        out = out.cpu().numpy().reshape(len(images), K, *out.shape[1:])
        frames = None
        if o.animate:
            frames = chain.numpy().reshape(chain.shape[0], len(images), K, *chain.shape[2:])
        return stats["forward_passes"], [(out[j], None if frames is None else frames[:, j])
                                         for j in range(len(images))]

    def write(self, rel: str, image: np.ndarray, hidden: np.ndarray, samples: np.ndarray, frames) -> list[str]:
        """Write every output of one input; each file appears whole or not at all."""
        from data.images import encode
        from PIL import Image

        from ray_jobs.gallery import gif_bytes

        o = self.opts
        names = output_names(rel, o)
        masked = np.where(hidden[..., None], MASKED_GREY, image).astype(np.uint8)
        blobs = [encode(Image.fromarray(s)) for s in samples]
        blobs += [encode(Image.fromarray(image)), encode(Image.fromarray(masked))]
        if o.animate:
            blobs.append(gif_bytes(frames))
        assert len(blobs) == len(names)
        # Every name passed untrusted.safe_rel when the job was planned (inpaint._clash); write_output checks
        # each again. The first sample is written last: a reader (or a resume) that finds it finds the rest too.
        for name, blob in list(zip(names, blobs))[1:] + [(names[0], blobs[0])]:
            untrusted.write_output(o.output, name, blob)
        return names


__all__ = ["JobOptions", "InpaintActor", "sampler_fields", "decode_batch", "output_names", "spec_hidden",
           "parse_box", "ORIGINAL_SUFFIX", "MASKED_SUFFIX"]


def options_dict(opts: JobOptions) -> dict:
    return asdict(opts)
