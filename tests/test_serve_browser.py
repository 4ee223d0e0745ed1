"""The inpainting page (ray_jobs/serve/static) in a real browser: Debian's headless Chromium, driven by
Playwright, against the real Serve app on a local Ray serving a trained debug export (tests/fixtures/serve.py).
A user picks a photo, paints a hole with the mouse, types a caption, watches the streamed passes and downloads
a sample: it has the photo's size and differs from it only inside the mask the page sent.

`make test` installs Chromium (apt-get); without it this test fails and says so, it does not skip.
ONADE_SCREENSHOTS=1 also writes docs/images/serve-page.png (the README's picture of the page).
"""

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.browser import chromium

pytestmark = pytest.mark.slow

W, H = 200, 150
BRUSH_CSS = 32  # the page's default brush diameter, in screen pixels
STROKE = [(0.30, 0.45), (0.45, 0.50), (0.62, 0.42)]  # fractions of the canvas: a 65x12 px hole or so
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "images" / "serve-page.png"


def photo(path: Path) -> np.ndarray:
    """A photo-like PNG: a sky gradient, a sun, a house and a lawn."""
    y, x = np.mgrid[0:H, 0:W]
    img = np.stack([60 + x * 80 // W, 120 + y * 100 // H, 230 - y * 60 // H], -1).astype(np.uint8)
    img[(x - 160) ** 2 + (y - 35) ** 2 < 18 ** 2] = (250, 205, 60)
    img[105:] = np.stack([40 + (x[105:] * 7) % 30, 140 + (y[105:] * 5) % 40, 50 + 0 * x[105:]], -1)
    img[70:125, 25:85] = (170, 70, 45)
    img[55:70, 20:90][np.abs(x[55:70, 20:90] - 55) < (y[55:70, 20:90] - 54) * 2.4] = (110, 40, 30)
    Image.fromarray(img).save(path)
    return img


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


def open_page(browser, url: str, **context) -> tuple:
    """The page at `url`, and the list its uncaught script errors go to."""
    pg = browser.new_page(accept_downloads=True, **context)
    pg.set_default_timeout(30_000)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(url)
    return pg, errors


def pick_photo(pg, path: Path, drop: bool = False) -> None:
    """Pick the photo with the file input, or drop it on the page as a file dragged from a file manager."""
    pg.wait_for_selector("body[data-ready='1']")
    if drop:
        files = pg.evaluate_handle("""([name, b64]) => {
            const t = new DataTransfer();
            t.items.add(new File([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], name, {type: "image/png"}));
            return t;
        }""", [path.name, base64.b64encode(path.read_bytes()).decode()])
        pg.dispatch_event("#drop", "drop", {"dataTransfer": files})
    else:
        pg.set_input_files("#image-file", str(path))
    pg.wait_for_selector(f"#canvas[data-size='{W}x{H}']")


def drag(pg, stroke) -> dict:
    """Drag the mouse along `stroke` (fractions of the canvas); returns the canvas's box on the page."""
    box = pg.locator("#canvas").bounding_box()
    points = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in stroke]
    pg.mouse.move(*points[0])
    pg.mouse.down()
    for p in points[1:]:
        pg.mouse.move(*p, steps=10)
    pg.mouse.up()
    return box


def paint(pg, stroke) -> tuple[float, float, float, float]:
    """Drag the mouse along `stroke` (fractions of the canvas); returns the box in image pixels the brush may
    have touched (x0, y0, x1, y1)."""
    box = drag(pg, stroke)
    r = BRUSH_CSS / 2 * W / box["width"] + 1.5
    xs, ys = [fx * W for fx, _ in stroke], [fy * H for _, fy in stroke]
    return min(xs) - r, min(ys) - r, max(xs) + r, max(ys) + r


def hole_pixels(pg) -> int:
    return int(pg.get_attribute("#canvas", "data-hole"))


def inpaint(pg, results: int):
    """Press Inpaint and wait for the `results`-th result; returns the request sent."""
    with pg.expect_request(lambda r: r.url.endswith("/v1/inpaint/stream")) as request:
        pg.click("#submit")
    pg.wait_for_selector(f"body[data-result='{results}']", timeout=90_000)
    assert pg.locator("#err-general").is_hidden(), pg.inner_text("#err-general")
    return request.value


def download(pg, selector: str) -> tuple[str, Path]:
    """Click `selector`; returns the download's file name and where Playwright saved it."""
    with pg.expect_download() as d:
        pg.click(selector)
    return d.value.suggested_filename, Path(d.value.path())


def refusal(pg, field: str) -> str:
    """Wait for the error shown after a refused request; it must be the one beside `field`."""
    pg.wait_for_selector(".error:not([hidden])")
    shown = pg.evaluate("Object.fromEntries([...document.querySelectorAll('.error:not([hidden])')]"
                        ".map(e => [e.id, e.textContent]))")
    assert list(shown) == [f"err-{field}"], shown
    return shown[f"err-{field}"]


def fits_width(pg, width: int) -> None:
    scroll = pg.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"the page is {scroll} px wide at a {width} px viewport"


@pytest.mark.timeout(300)
def test_paint_inpaint_and_download(serve_app, browser, tmp_path):
    src = photo(tmp_path / "garden.png")
    pg, js_errors = open_page(browser, serve_app.url, viewport={"width": 1280, "height": 860})
    assert pg.title() == "onade inpainting"
    pg.wait_for_selector("body[data-ready='1']")
    unlabelled = pg.evaluate("""[...document.querySelectorAll('input, select, textarea')]
        .filter(e => !e.labels.length && !e.getAttribute('aria-label')).map(e => e.id)""")
    assert unlabelled == []
    assert "parameters" in pg.inner_text("#model-info")
    assert pg.locator("#guidance-note").is_visible(), "the debug export has no caption dropout: guidance is noted"
    model = json.loads(pg.evaluate("fetch('v1/model').then(r => r.text())"))
    assert pg.input_value("#strategy") == model["defaults"]["strategy"]
    assert pg.input_value("#steps") == str(model["defaults"]["steps"])
    pick_photo(pg, tmp_path / "garden.png")

    # a mask of another size is refused in place, before anything is sent
    Image.new("L", (10, 10), 255).save(tmp_path / "small.png")
    pg.set_input_files("#mask-file", str(tmp_path / "small.png"))
    assert "mask is 10x10 but the image is 200x150" in refusal(pg, "mask")

    touched = paint(pg, STROKE)
    painted = hole_pixels(pg)
    assert painted > 100
    # the server's refusals show beside the field they name: steps past the limit, then a hole longer than
    # the image's shorter side; Ctrl+Z takes that stroke back
    pg.fill("#steps", str(model["limits"]["max_steps"] + 1))
    paint(pg, [(0.01, 0.9), (0.99, 0.9)])
    pg.click("#submit")
    assert "steps must be at most" in refusal(pg, "steps")
    pg.fill("#steps", str(model["defaults"]["steps"]))
    pg.click("#submit")
    assert "longer than the image's shorter side" in refusal(pg, "mask")
    pg.keyboard.press("Control+z")
    assert hole_pixels(pg) == painted

    pg.fill("#caption", "a red house in a garden under a blue sky")
    pg.fill("#samples", "2")
    inpaint(pg, 1)
    assert int(pg.get_attribute("#previews", "data-updates")) >= 1, "no streamed update was shown"
    assert pg.locator("#samples-list button").count() == 2
    assert f"{painted:,} hole pixels" in pg.inner_text("#status")
    pg.locator("#samples-list button").nth(1).click()
    assert pg.get_attribute("#samples-list button >> nth=1", "aria-pressed") == "true"
    command = pg.input_value("#command")
    assert command.startswith("python -m ray_jobs.inpaint ") and "--mask masks/" in command
    assert "--samples 2" in command

    name, path = download(pg, "#download")
    assert name == "garden.inpainted.1.png"
    out = np.asarray(Image.open(path).convert("RGB"))
    name, path = download(pg, "#download-mask")
    assert name == "garden.png"  # the batch job finds it as masks/garden.png
    hole = np.asarray(Image.open(path).convert("L")) > 127
    assert out.shape == src.shape == hole.shape + (3,)
    assert hole.sum() == painted
    ys, xs = np.nonzero(hole)
    x0, y0, x1, y1 = touched
    assert x0 <= xs.min() and xs.max() < x1 and y0 <= ys.min() and ys.max() < y1, (xs.min(), xs.max(), touched)
    assert np.array_equal(out[~hole], src[~hole]), "a pixel outside the painted hole changed"
    assert (out[hole] != src[hole]).any()
    pg.locator("#samples-list button").nth(0).click()
    name, path = download(pg, "#download")
    assert name == "garden.inpainted.0.png"
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB"))[~hole], src[~hole])

    if os.environ.get("ONADE_SCREENSHOTS") == "1":
        pg.evaluate("window.scrollTo(0, 0)")
        pg.screenshot(path=str(SCREENSHOT), full_page=True)
    assert js_errors == []
    pg.close()


@pytest.mark.timeout(180)
def test_phone_width_and_a_token(serve_app, browser, tmp_path):
    """At 390x844 the page is one column that does not scroll sideways; a photo dropped on it and a hole
    dragged with the box tool inpaint. The server asks for a token here (GET /v1/model answers 401 until one
    is sent): the page asks for it and sends it on every call."""
    photo(tmp_path / "phone photo.png")
    def model_route(route):
        auth = route.request.headers.get("authorization")
        if auth != "Bearer s3cret":
            return route.fulfill(status=401, content_type="application/json", body=json.dumps(
                {"error": "this server needs 'Authorization: Bearer <token>'", "field": "authorization",
                 "status": 401}))
        route.continue_()

    pg, js_errors = open_page(browser, "about:blank", viewport={"width": 390, "height": 844}, device_scale_factor=2)
    pg.route("**/v1/model", model_route)
    pg.goto(serve_app.url)
    pg.wait_for_selector("#token-form:not([hidden])")
    fits_width(pg, 390)
    pg.fill("#token", "s3cret")
    pg.press("#token", "Enter")
    pick_photo(pg, tmp_path / "phone photo.png", drop=True)
    assert pg.locator("#token-form").is_hidden()
    canvas = pg.locator("#canvas").bounding_box()
    assert canvas["x"] >= 0 and canvas["x"] + canvas["width"] <= 390
    fits_width(pg, 390)

    pg.click("#tool-box")
    drag(pg, [(0.3, 0.3), (0.6, 0.7)])
    assert abs(hole_pixels(pg) - 0.3 * W * 0.4 * H) <= W + H  # the box, give or take a row and a column
    pg.fill("#guidance", "2")
    request = inpaint(pg, 1)
    assert request.all_headers().get("authorization") == "Bearer s3cret"
    assert pg.locator("#samples-list button").count() == 1
    assert "Warning: guidance 2, but this model was trained with train.caption_dropout 0" in pg.inner_text("#status")
    fits_width(pg, 390)
    picked = pg.locator("#picked").bounding_box()
    assert picked["x"] + picked["width"] <= 390
    assert js_errors == []
    pg.close()
