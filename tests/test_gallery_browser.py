"""The gallery in a real browser: Debian's headless Chromium, driven by Playwright, reads pages written by
write_gallery from a folder of real images served over HTTP, as a user opening a big job's output would.

`make test` installs Chromium (apt-get); without it this test fails and says so, it does not skip.
"""

import functools
import http.server
import io
import json
import threading
import urllib.parse
from pathlib import Path

import pytest
from PIL import Image

from ray_jobs.outputs import write_gallery
from tests.fixtures.browser import chromium

pytestmark = pytest.mark.slow

NUM_ROWS, PAGE_ROWS = 450, 200


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _name(i: int) -> str:
    # URL-special and non-ASCII names in the first page, where the test follows every link
    if i % 7 == 0:
        return f"dir #2/we ird #{i} ?q=2 %41 ü"
    return f"batch {i // 100}/img{i:03d}"


def _build_output(out: Path) -> Path:
    """An output folder as the inpainting job leaves it, with results.jsonl, and its gallery pages."""
    colours = [(200, 40, 40), (40, 160, 60), (40, 60, 200), (220, 200, 40)]
    sample = [_encode(Image.new("RGB", (16, 16), c), "PNG") for c in colours]
    thumb = [_encode(Image.new("RGB", (96, 32), c), "JPEG", quality=80) for c in colours]
    frames = [Image.new("RGB", (32, 16), c) for c in colours]
    gif = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    rows = []
    for i in range(NUM_ROWS):
        stem = _name(i)
        if i % 50 == 3:
            rows.append({"rel": f"{stem}.png", "status": "error", "caption": f"row {i}",
                         "error": f"cannot identify image file <{stem}.png>", "files": {}})
            continue
        files = {"samples": [f"{stem}.{k}.png" for k in range(2)], "masked": f"{stem}.masked.png",
                 "animation": f"{stem}.gif" if i == 1 else "", "thumb": f"{stem}.thumb.jpg"}
        for k, rel in enumerate(files["samples"] + [files["masked"]]):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(sample[(i + k) % len(sample)])
        (out / files["thumb"]).write_bytes(thumb[i % len(thumb)])
        if files["animation"]:
            (out / files["animation"]).write_bytes(gif)
        rows.append({"rel": f"{stem}.png", "status": "ok", "caption": f"row {i}: a <b>caption</b>",
                     "resumed": i % 5 == 0, "image_size": [1600, 1200], "files": files})
    results = out / "results.jsonl"
    results.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert write_gallery(str(out), str(results), summary="this run: 12.50 images/s", page_rows=PAGE_ROWS) == \
        ["index.html", "index-2.html", "index-3.html"]
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """The output folder over HTTP on 127.0.0.1, as an S3 static website would serve it."""
    out = _build_output(tmp_path / "out")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield out, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def page():
    with chromium() as browser:
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        pg.set_default_timeout(30_000)
        yield pg


def _rows(pg) -> list[int]:
    return [int(n) for n in pg.locator("td.num").all_inner_texts()]


def _scroll_to_bottom_and_wait_for_images(pg) -> None:
    # Step down a screen at a time: lazy images are fetched only as they come near the viewport, and a jump
    # straight to the bottom would skip the middle of the page.
    pg.evaluate("""async () => {
        for (let y = 0; y < document.body.scrollHeight; y += window.innerHeight / 2) {
            window.scrollTo(0, y);
            await new Promise(r => setTimeout(r, 30));
        }
        window.scrollTo(0, document.body.scrollHeight);
    }""")
    try:
        pg.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)", timeout=30_000)
    except Exception:
        broken = pg.evaluate("[...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        raise AssertionError(f"{len(broken)} image(s) did not load on {pg.url}: {broken[:5]}") from None


@pytest.mark.timeout(180)
def test_gallery_pages_load_in_chromium(served, page):
    out, base = served
    requested = []
    page.on("request", lambda r: requested.append(r.url) if r.resource_type == "image" else None)
    page.goto(base + "index.html", wait_until="load")
    totals = page.locator("p.totals").inner_text()
    assert totals == "450 inputs: 441 done (351 in this run, 90 skipped as done by earlier runs), 9 failed", totals
    assert page.locator("p.summary").inner_text() == "this run: 12.50 images/s"
    assert _rows(page) == list(range(1, 201))
    assert page.locator("td.error").count() == 4
    assert page.locator("img").count() == 196
    assert len(requested) < 150, f"{len(requested)} images fetched before scrolling: are they lazy?"
    _scroll_to_bottom_and_wait_for_images(page)

    # every link on page 1 (full-size samples, masked, the GIF, the other pages) resolves, names with
    # spaces, '#', '?', '%' and unicode included, and serves the file the row names
    links = page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")
    assert len(links) > 4 * 196
    for url in set(links):
        resp = page.request.get(url)
        assert resp.status == 200, (url, resp.status)
    weird = page.locator("tr", has_text="we ird #7 ?q=2 %41 ü.png").locator("td.links a", has_text="1")
    href = weird.get_attribute("href")
    assert "%23" in href and "%3F" in href and "%2541" in href, href
    with page.expect_navigation():
        weird.click()
    assert urllib.parse.unquote(page.url.split("/", 3)[3]) == "dir #2/we ird #7 ?q=2 %41 ü.0.png"
    assert page.request.get(page.url).body() == (out / "dir #2/we ird #7 ?q=2 %41 ü.0.png").read_bytes()

    page.goto(base + "index.html")
    page.locator("nav").first.get_by_role("link", name="2", exact=True).click()
    page.wait_for_url(base + "index-2.html")
    assert _rows(page) == list(range(201, 401))
    page.locator("nav").first.get_by_role("link", name="next ›").click()
    page.wait_for_url(base + "index-3.html")
    assert _rows(page) == list(range(401, 451))
    assert page.locator("p.totals").inner_text() == totals
    _scroll_to_bottom_and_wait_for_images(page)
    assert page.evaluate("document.querySelectorAll('script').length") == 0
