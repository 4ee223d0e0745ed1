"""The gallery pages (ray_jobs.outputs.write_gallery) from results.jsonl files the tests write: pagination, totals,
escaping, old rows, and 100,000 rows in bounded time and size. A real browser reads them in
test_gallery_browser.py."""

import html
import json
import re
import time
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from ray_jobs.outputs import NAV_WINDOW, row_files, write_gallery

HOSTILE = 'a"><script>x</script>#%?.png'


def _ok(i: int, **extra) -> dict:
    stem = f"img{i:06d}"
    return {"rel": f"{stem}.png", "status": "ok", "caption": f"caption {i}", "image_size": [1600, 1200],
            "files": {"samples": [f"{stem}.0.png", f"{stem}.1.png"], "masked": f"{stem}.masked.png",
                      "animation": "", "thumb": f"{stem}.thumb.jpg"}, **extra}


def _write(path: Path, recs, extra_lines=()) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return str(path)


def _row_nums(page: str) -> list[int]:
    return [int(n) for n in re.findall(r'<td class="num">(\d+)</td>', page)]


class _Tags(HTMLParser):
    """Every start tag and its attributes, as a browser's tokenizer sees them."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _links(page: str) -> list[str]:
    return [a[k] for _, a in _Tags(page).tags for k in ("href", "src") if k in a]


def test_no_rows_is_one_page_that_says_so(tmp_path):
    for name, lines in [("missing.jsonl", None), ("empty.jsonl", []), ("garbage.jsonl", ["", "{not json", "[1, 2]"])]:
        path = str(tmp_path / name) if lines is None else _write(tmp_path / name, [], lines)
        out = tmp_path / f"out-{name}"
        assert write_gallery(str(out), path) == ["index.html"]
        page = (out / "index.html").read_text()
        assert "No inputs yet" in page and "0 inputs: 0 done" in page and "<table" not in page
        assert [p.name for p in out.iterdir()] == ["index.html"]


@pytest.mark.parametrize("num_rows,expected", [(1, [[1]]), (5, [[1, 2, 3, 4, 5]]), (6, [[1, 2, 3, 4, 5], [6]]),
                                               (10, [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])])
def test_pages_split_at_page_rows(tmp_path, num_rows, expected):
    names = write_gallery(str(tmp_path / "out"), _write(tmp_path / "r.jsonl", [_ok(i) for i in range(num_rows)]),
                          page_rows=5)
    assert names == ["index.html", "index-2.html", "index-3.html"][:len(expected)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
    for name, rows in zip(names, expected):
        page = (tmp_path / "out" / name).read_text()
        assert _row_nums(page) == rows
        assert f"{num_rows} inputs: {num_rows} done" in page
        nav = [u for u in _links(page) if u.startswith("index")]
        assert set(nav) <= set(names) and (len(names) == 1) == (not nav)  # one page: no navigation at all
    if len(names) == 2:
        first, second = ((tmp_path / "out" / n).read_text() for n in names)
        assert '<a href="index-2.html">next ›</a>' in first and '<a href="index.html">‹ prev</a>' in second


def test_totals_count_all_rows_by_run_and_skip_garbage(tmp_path):
    recs = [_ok(0), _ok(1, resumed=True), _ok(2, resumed=True), _ok(3),
            {"rel": "bad.png", "status": "error", "error": "cannot decode"},
            {"rel": "bad2.png", "status": "error", "resumed": True},  # an earlier run's failure, carried over
            _ok(6), {"rel": "nostatus.png"}]
    path = _write(tmp_path / "r.jsonl", recs, ["", "   ", '{"rel": "half a li', "null", "\xff garbage"])
    names = write_gallery(str(tmp_path / "out"), path, summary="2.50 images/s <fast>", page_rows=3)
    assert len(names) == 3
    for name in names:  # every page shows the totals over all of results.jsonl, not just its own rows
        page = (tmp_path / "out" / name).read_text()
        assert "8 inputs: 5 done (3 in this run, 2 skipped as done by earlier runs), 3 failed" in page
        assert "2.50 images/s &lt;fast&gt;" in page
    first = (tmp_path / "out" / "index.html").read_text()
    assert first.count("(earlier run)") == 2
    third = (tmp_path / "out" / "index-3.html").read_text()
    assert "cannot decode" not in third and _row_nums(third) == [7, 8]
    assert '<td colspan="3" class="error">cannot decode</td>' in (tmp_path / "out" / "index-2.html").read_text()


def test_a_row_shows_thumbnail_size_and_links_to_every_full_size_file(tmp_path):
    rec = _ok(7)
    rec["files"]["animation"] = "img000007.gif"
    write_gallery(str(tmp_path / "out"), _write(tmp_path / "r.jsonl", [rec]))
    page = (tmp_path / "out" / "index.html").read_text()
    imgs = [a for t, a in _Tags(page).tags if t == "img"]
    assert imgs == [{"class": "thumb", "src": "img000007.thumb.jpg", "alt": "", "loading": "lazy",
                     "decoding": "async"}]
    assert re.search(r"img \{[^}]*height: \d+px", page)  # explicit height: no reflow as lazy images arrive
    assert '<a href="img000007.0.png"><img class="thumb"' in page
    for target, text in [("img000007.0.png", "1"), ("img000007.1.png", "2"), ("img000007.masked.png", "masked"),
                         ("img000007.gif", "animation")]:
        assert f'<a href="{target}">{text}</a>' in page
    assert "1600x1200" in page and "caption 7" in page
    assert "<script" not in page and "http" not in page  # static, self-contained


def test_old_rows_with_only_outputs(tmp_path):
    old = {"rel": "d/cat.png", "status": "ok", "caption": "a cat",
           "outputs": ["d/cat.png", "d/cat.1.png", "d/cat.original.png", "d/cat.masked.png", "d/cat.gif"]}
    assert row_files(old).samples == ["d/cat.png", "d/cat.1.png"]
    assert (row_files(old).masked, row_files(old).animation, row_files(old).thumb) == \
        ("d/cat.masked.png", "d/cat.gif", "")
    with_thumb = dict(old, outputs=old["outputs"] + ["d/cat.thumb.jpg"])
    assert row_files(with_thumb).thumb == "d/cat.thumb.jpg" and "d/cat.thumb.jpg" not in row_files(with_thumb).samples
    broken = {"rel": 5, "status": "ok", "outputs": "not a list", "caption": None, "image_size": "big"}
    write_gallery(str(tmp_path / "out"), _write(tmp_path / "r.jsonl", [old, broken]))
    page = (tmp_path / "out" / "index.html").read_text()
    assert "original" not in page  # the input's copy is not a result
    # no thumbnail: the first sample itself is the picture, still lazy
    assert '<img class="full" src="d/cat.png" alt="" loading="lazy" decoding="async">' in page
    assert '<a href="d/cat.gif">animation</a>' in page and '<a href="d/cat.masked.png">masked</a>' in page
    assert "(unnamed)" in page and "no outputs" in page


def test_hostile_names_cannot_inject_markup_and_links_are_percent_encoded(tmp_path):
    rec = {"rel": HOSTILE, "status": "ok", "caption": "<script>alert(1)</script> ü",
           "files": {"samples": [HOSTILE], "masked": "d/we ird #1 ?q=2 %41 ü.masked.png", "animation": "",
                     "thumb": 'x"><img src=y onerror=z()>.thumb.jpg'}}
    bad = {"rel": "<i>bad</i>.png", "status": "error", "error": "<img src=x onerror=y()>"}
    write_gallery(str(tmp_path / "out"), _write(tmp_path / "r.jsonl", [rec, bad]), summary="</p><b>run</b>")
    page = (tmp_path / "out" / "index.html").read_text()
    tags = _Tags(page).tags
    assert not [t for t, _ in tags if t in ("script", "b", "i")]
    thumb = "x%22%3E%3Cimg%20src%3Dy%20onerror%3Dz%28%29%3E.thumb.jpg"
    assert [a for t, a in tags if t == "img"] == [{"class": "thumb", "src": thumb, "alt": "", "loading": "lazy",
                                                   "decoding": "async"}]
    assert not [a for _, a in tags if set(a) - {"href", "src", "class", "alt", "loading", "decoding", "colspan",
                                                "charset"}]
    encoded = "a%22%3E%3Cscript%3Ex%3C/script%3E%23%25%3F.png"
    assert urllib.parse.unquote(encoded) == HOSTILE
    assert encoded in _links(page)
    assert "d/we%20ird%20%231%20%3Fq%3D2%20%2541%20%C3%BC.masked.png" in _links(page)
    for u in _links(page):
        assert not set("#? \"<>") & set(u), u
    assert html.escape(HOSTILE) in page and "&lt;script&gt;alert(1)&lt;/script&gt; ü" in page
    assert "&lt;img src=x onerror=y()&gt;" in page and "&lt;/p&gt;&lt;b&gt;run&lt;/b&gt;" in page


def test_nav_is_a_small_window_on_many_pages(tmp_path):
    write_gallery(str(tmp_path / "out"), _write(tmp_path / "r.jsonl", [_ok(i) for i in range(500)]), page_rows=1)
    page = (tmp_path / "out" / "index-250.html").read_text()
    nav = page[page.index("<nav>"):page.index("</nav>")]
    linked = sorted({int(m or 1) for m in re.findall(r'href="index(?:-(\d+))?\.html"', nav)})
    assert linked == [1, *range(250 - NAV_WINDOW, 250), *range(251, 251 + NAV_WINDOW), 500]
    assert "<strong>250</strong>" in nav and nav.count("…") == 2
    last = (tmp_path / "out" / "index-500.html").read_text()
    assert '<span class="off">next ›</span>' in last and '<a href="index-499.html">‹ prev</a>' in last


def test_100k_rows_in_bounded_time_and_page_size(tmp_path):
    rows = []
    for i in range(100_000):
        r = _ok(i, resumed=i % 3 == 0)
        if i % 97 == 0:
            r = {"rel": f"broken {i}.png", "status": "error", "error": "image too large: 900,000,000 pixels"}
        rows.append(json.dumps(r))
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(rows) + "\n")
    del rows
    t0 = time.perf_counter()
    names = write_gallery(str(tmp_path / "out"), str(path), summary="this run: 40.0 images/s")
    seconds = time.perf_counter() - t0
    print(f"100,000 rows -> {len(names)} pages in {seconds:.2f} s")
    assert seconds < 20, f"{seconds:.1f} s for 100,000 rows"  # ~2 s on one laptop core; margin for shared CI
    assert len(names) == 500 and names[-1] == "index-500.html"
    failed = len(range(0, 100_000, 97))
    resumed = len([i for i in range(0, 100_000, 3) if i % 97])
    totals = f"100,000 inputs: {100_000 - failed:,} done ({100_000 - failed - resumed:,} in this run, " \
             f"{resumed:,} skipped as done by earlier runs), {failed:,} failed"
    for name in (names[0], names[249], names[-1]):
        page = (tmp_path / "out" / name).read_text()
        assert totals in page
        assert len(_row_nums(page)) == 200
        assert len(re.findall(r'href="index', page)) <= 2 * (4 + 2 * NAV_WINDOW + 3)  # top and bottom nav
    sizes = [(tmp_path / "out" / n).stat().st_size for n in names]
    assert max(sizes) < 200_000, max(sizes)
    assert _row_nums((tmp_path / "out" / names[-1]).read_text())[-1] == 100_000


def test_thumbnails_show_rgba_on_white_like_the_masked_view():
    from ray_jobs.outputs import thumb

    icon = np.zeros((40, 40, 4), np.uint8)  # black RGB under alpha 0: a transparent icon's background
    icon[10:30, 10:30] = (200, 30, 30, 255)
    tile = np.asarray(thumb(icon))
    assert tile.shape[2] == 3 and (tile[:5, :5] == 255).all()  # transparent shows white, not the hidden black
    assert (np.abs(tile[60, 60].astype(int) - (200, 30, 30)) <= 2).all()


def test_rows_and_totals_show_how_the_fills_look(tmp_path):
    from onade.texture import Texture
    from ray_jobs.outputs import Totals, render_row, row_texture

    row = {"rel": "a.png", "status": "ok", "files": {"samples": ["a.png"]},
           "texture": {"l1_sum": 120.0, "pairs": 10, "specks": 1, "pixels": 50},
           "reference_texture": {"l1_sum": 100.0, "pairs": 10, "specks": 0, "pixels": 50}}
    assert row_texture(row) == Texture(120.0, 10, 1, 50)
    html_row = render_row(1, row)
    assert "hole roughness 12.0, specks 2.00% (reference 10.0, x1.20; specks 0.00%)" in html_row
    totals = Totals()
    for rec in (row, {**row, "reference_texture": None}, {"status": "ok", "texture": {"l1_sum": "x"}}):
        totals.add(rec)
    # Samples pool over the rows that have them; the reference over those that have one too.
    assert totals.samples == Texture(240.0, 20, 2, 100) and totals.reference == Texture(100.0, 10, 0, 50)
    assert "Fills: hole roughness 12.0, specks 2.00% (reference 10.0" in totals.line()
