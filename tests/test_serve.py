"""The Serve app's HTTP API, over real HTTP against the real Ray Serve application on a local Ray, serving a
trained debug export (tests/fixtures/serve.py): every route, every refusal, outputs at the input's size with
the bytes outside the hole unchanged, the streamed form, and exactness under batching."""

import base64
import http.client
import io
import json
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from ray_jobs.inpaint_inputs import image_seeds
from tests.fixtures.serve import SERVE_SIZE, TRAIN_STEPS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def photo(w: int = 60, h: int = 45, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], -1).astype(np.uint8)
    img[h // 3:2 * h // 3, w // 3:2 * w // 3] = rng.integers(0, 256, 3)
    return img


def post(url: str, image: bytes | None, name: str = "photo.png", mask: bytes | None = None, stream=False,
         headers: dict | None = None, **fields) -> requests.Response:
    files = {}
    if image is not None:
        files["image"] = (name, image, "image/png")
    if mask is not None:
        files["mask"] = ("mask.png", mask, "image/png")
    files.update({k: (None, str(v)) for k, v in fields.items()})  # multipart even without a file
    route = "v1/inpaint/stream" if stream else "v1/inpaint"
    return requests.post(url + route, files=files, timeout=120, stream=stream, headers=headers)


def decoded(sample: dict) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(sample["data"]))).convert("RGB"))


def test_health_docs_and_model(serve_app):
    url = serve_app.url
    assert requests.get(url + "healthz", timeout=10).json() == {"status": "ok"}
    assert requests.get(url + "docs", timeout=10).status_code == 200
    paths = requests.get(url + "openapi.json", timeout=10).json()["paths"]
    assert {"/v1/inpaint", "/v1/inpaint/stream", "/v1/model", "/healthz"} <= set(paths)
    info = requests.get(url + "v1/model", timeout=10).json()
    assert info["image_size"] == SERVE_SIZE and info["train_step"] == TRAIN_STEPS
    assert info["parameters"] > 1000 and info["defaults"]["steps"] == 32
    assert info["limits"]["max_pixels"] == serve_app.options.max_pixels
    assert info["budgets"] is None  # this export ships no loss profile
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "app.js" in page.text and requests.get(url + "app.js", timeout=10).status_code == 200


def test_samples_come_back_at_the_input_size_changing_only_the_hole(serve_app):
    img = photo(60, 45)
    # The model's own draws (a 0.4 nucleus may draw the same flat fill from two seeds of this small model)
    r = post(serve_app.url, png(img), hole="box:10,5,20,16", caption="a red circle", samples=2, seed=7, top_p=1)
    assert r.status_code == 200, r.text
    body = r.json()
    hole = np.zeros(img.shape[:2], bool)
    hole[5:21, 10:30] = True
    assert body["image_size"] == [60, 45] and body["hole_pixels"] == hole.sum()
    assert body["seeds"] == image_seeds(7, "photo.png", 2) == [s["seed"] for s in body["samples"]]
    assert body["forward_passes"] == 30 and body["strategy"] == "ancestral" and body["model_seconds"] > 0
    outs = [decoded(s) for s in body["samples"]]
    for out in outs:
        assert out.shape == img.shape
        assert np.array_equal(out[~hole], img[~hole])
    assert not np.array_equal(outs[0][hole], outs[1][hole]), "two seeds, two samples"
    assert "--seed 7" in body["command"] and "--mask box:10,5,20,16" in body["command"]
    assert "--top-p 1.0" in body["command"]
    assert body["warnings"] == []

    # output=image: the one sample's bytes, the metadata in a header; the same sample as in JSON
    r = post(serve_app.url, png(img), hole="box:10,5,20,16", caption="a red circle", seed=7, top_p=1,
             output="image")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert json.loads(r.headers["x-onade-metadata"])["seeds"] == image_seeds(7, "photo.png", 1)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB")), outs[0])


def test_a_mask_image_and_other_formats(serve_app):
    img = photo(50, 40, seed=1)
    mask = np.zeros((40, 50), np.uint8)
    mask[10:25, 20:32] = 255
    r = post(serve_app.url, png(img), mask=png(mask), format="webp", strategy="independent-gibbs", steps=6)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["hole"] == "mask" and body["forward_passes"] == 7 and "--mask masks/" in body["command"]
    out = Image.open(io.BytesIO(base64.b64decode(body["samples"][0]["data"])))
    assert out.format == "WEBP" and out.size == (50, 40)
    r = post(serve_app.url, png(img), mask=png(mask), format="jpg", output="image")
    assert r.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(r.content)).size == (50, 40)


def test_guidance_on_a_model_trained_without_caption_dropout_comes_back_with_a_warning(serve_app):
    from ray_jobs.inpaint import guidance_warning

    info = requests.get(serve_app.url + "v1/model", timeout=10).json()
    assert info["caption_dropout"] == 0  # the fixture's debug export
    r = post(serve_app.url, png(photo()), hole="center", caption="a red circle", guidance=2, steps=3)
    assert r.status_code == 200, r.text
    assert r.json()["warnings"] == [guidance_warning(2.0, 0.0, option="guidance")]
    assert r.json()["warnings"][0].startswith("warning: guidance 2, but this model was trained with ")
    r = post(serve_app.url, png(photo()), hole="center", guidance=2, steps=3, output="image")
    assert json.loads(r.headers["x-onade-metadata"])["warnings"] == [guidance_warning(2.0, 0.0, "guidance")]


@pytest.mark.parametrize("case, fields, status, field", [
    ("corrupt image", dict(image=b"\x89PNG not really"), 400, "image"),
    ("no image", dict(image=None, caption="a cat"), 400, "image"),
    ("mask of the wrong size", dict(mask=png(np.full((10, 10), 255, np.uint8))), 400, "mask"),
    ("hole longer than the shorter side", dict(hole="box:0,0,35,10"), 400, "hole"),
    ("bad hole spec", dict(hole="circle"), 400, "hole"),
    ("unknown strategy", dict(strategy="dream"), 400, "strategy"),
    ("steps not a number", dict(steps="many"), 400, "steps"),
    ("too many steps", dict(steps=10 ** 6), 400, "steps"),
    ("too many samples", dict(samples=99), 400, "samples"),
    ("unknown field", dict(stpes=3), 400, "stpes"),
    ("caption over the limit", dict(caption="x" * 2001), 400, "caption"),
    ("bad format", dict(format="gif"), 400, "format"),
    ("too many pixels", dict(image=png(np.zeros((2000, 2100, 3), np.uint8))), 413, "image"),
])
def test_bad_requests_are_4xx_naming_the_field(serve_app, case, fields, status, field):
    image = fields.pop("image", png(photo(40, 30)))
    r = post(serve_app.url, image, **fields)
    assert r.status_code == status, (case, r.text)
    assert r.json()["field"] == field, case
    assert r.json()["error"]


def test_a_body_over_the_byte_limit_is_refused_before_it_is_read(serve_app):
    parts = urllib.parse.urlsplit(serve_app.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", "/v1/inpaint")
    conn.putheader("Content-Type", "multipart/form-data; boundary=x")
    conn.putheader("Content-Length", str(serve_app.options.request_bytes() + 1))
    conn.endheaders()  # no body follows
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["field"] == "body"


def test_the_stream_sends_updates_then_the_same_result_as_a_plain_call(serve_app):
    img = photo(48, 48, seed=2)
    fields = dict(hole="center", caption="a blue square", seed=3)
    with post(serve_app.url, png(img), stream=True, **fields) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in r.iter_lines() if line]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "result" and kinds.count("update") >= 3, kinds
    passes = [e["pass"] for e in events if e["event"] == "update"]
    assert passes == sorted(passes) and passes[-1] <= events[0]["passes"]
    first = events[1]["samples"][0]
    assert first.startswith("data:image/png;base64,")
    assert Image.open(io.BytesIO(base64.b64decode(first.split(",", 1)[1]))).size[0] >= SERVE_SIZE
    plain = post(serve_app.url, png(img), **fields).json()
    assert [s["data"] for s in events[-1]["samples"]] == [s["data"] for s in plain["samples"]]


def test_batched_requests_give_the_bytes_of_solo_requests(serve_app):
    """8 concurrent requests (batched on the replica, two sampler settings among them) against the same 8 one
    at a time."""
    reqs = [dict(image=png(photo(40 + i, 36, seed=i)), name=f"img{i}.png", hole="center", caption=f"shape {i}",
                 seed=i, samples=1 + i % 2, **({"strategy": "maskgit", "steps": 8} if i % 4 == 3 else {}))
            for i in range(8)]

    def call(kw):
        kw = dict(kw)
        r = post(serve_app.url, kw.pop("image"), **kw)
        assert r.status_code == 200, r.text
        return r.json()

    solo = [call(kw) for kw in reqs]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(call, reqs))
    assert max(b["batch_requests"] for b in together) > 1, "the concurrent requests were batched"
    assert max(b["batch_requests"] for b in solo) == 1
    for a, b in zip(solo, together):
        assert [s["data"] for s in a["samples"]] == [s["data"] for s in b["samples"]]
