"""The inpainting job's visible outputs: an animated GIF of a sampling chain and the `index.html` gallery.

The gallery is one static page at the output root (original | masked | samples | animation, with each
caption), linking the files by relative path, so it works from a local folder or an S3 static website.
It is written from results.jsonl line by line, so its memory does not grow with the number of inputs.
"""

from __future__ import annotations

import html
import io
import json
import os
import urllib.parse
from collections.abc import Iterable

import numpy as np

GIF_FRAME_MS = 80
GIF_HOLD_MS = 1500  # the last frame (the result) stays up before the loop restarts
THUMB_PX = 128  # images are shown at this width, upscaled without smoothing


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


_HEAD = """<!doctype html>
<html><head><meta charset="utf-8"><title>onade inpainting</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }}
td, th {{ padding: 6px 10px; border-bottom: 1px solid #ddd; vertical-align: middle; text-align: left; }}
img {{ image-rendering: pixelated; height: {px}px; }}
.caption {{ max-width: 22em; }}
.error {{ color: #a00; }}
</style></head><body>
<h1>onade inpainting</h1>
<p>{summary}</p>
<table>
<tr><th>input</th><th>caption</th><th>original</th><th>masked</th><th>samples</th><th>animation</th></tr>
"""


def href(path: str) -> str:
    """A relative output path as an attribute value: percent-encoded first (a `#`, `?` or `%` in a file name
    would otherwise end or change the URL), then HTML-escaped."""
    return html.escape(urllib.parse.quote(path, safe="/"), quote=True)


def _img(src: str) -> str:
    return f'<a href="{href(src)}"><img src="{href(src)}" alt=""></a>'


def write_index(path: str, records: Iterable[dict], summary: str) -> int:
    """Write the gallery to the local file `path`; records are results.jsonl rows. Returns rows written."""
    from ray_jobs.inpaint_actor import MASKED_SUFFIX, ORIGINAL_SUFFIX

    n = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write(_HEAD.format(px=THUMB_PX, summary=html.escape(summary)))
        for r in records:
            name = html.escape(r.get("rel") or r.get("input", ""))
            caption = html.escape(r.get("caption") or "(no caption)")
            outs = r.get("outputs") or []
            if r.get("status") != "ok" or not outs:
                f.write(f'<tr><td>{name}</td><td class="caption">{caption}</td>'
                        f'<td colspan="4" class="error">{html.escape(r.get("error", "no outputs"))}</td></tr>\n')
                n += 1
                continue
            original = next((o for o in outs if o.endswith(ORIGINAL_SUFFIX)), "")
            masked = next((o for o in outs if o.endswith(MASKED_SUFFIX)), "")
            gif = next((o for o in outs if o.endswith(".gif")), "")
            samples = [o for o in outs if o.endswith(".png") and o not in (original, masked)]
            f.write(f'<tr><td>{name}</td><td class="caption">{caption}</td><td>{_img(original)}</td>'
                    f'<td>{_img(masked)}</td><td>{" ".join(_img(s) for s in samples)}</td>'
                    f'<td>{_img(gif) if gif else ""}</td></tr>\n')
            n += 1
        f.write("</table></body></html>\n")
    return n


def read_records(path: str) -> Iterable[dict]:
    """results.jsonl rows from a local file, one at a time."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


__all__ = ["gif_bytes", "href", "write_index", "read_records"]
