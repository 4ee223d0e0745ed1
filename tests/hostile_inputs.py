"""Inputs that other people could put in a folder or bucket, each with what a job must make of it.

`write_hostile_folder(root, outside)` fills a local folder (symlinks out of it, a FIFO, a decompression
bomb (`png_bomb`), a 50 MB caption file, names with URL-special characters); `hostile_keys(...)` gives S3
keys that are legal in S3 but not as paths (`..`, `.`, empty segments, backslashes). `outside` is a folder
beside the input that holds a secret image and caption nothing may read.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

WEIRD_NAME = "we ird #1 ?q=2 %41 ü"  # '#', '?', '%', spaces and unicode in one file name
SCRIPT_CAPTION = "<script>alert(1)</script> a <b>red</b> square & more"
BIG_CAPTION_BYTES = 50 * 1000 * 1000
SECRET_CAPTION = "SECRET caption that must never be read"


@dataclass(frozen=True)
class Case:
    rel: str  # relative to the input root
    ok: bool
    reason: str = ""  # a substring of the error row's reason
    caption: str = ""  # the caption an ok row must carry


def _png(colour: tuple[int, int, int], size: int = 24) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), colour, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(side: int = 30000) -> bytes:
    """A valid 1-bit grey PNG of side x side pixels (900 Mpx by default) in ~110 KB: all-zero rows compress
    about 1000:1. Decoded naively it needs side*side bytes, then 3x that as RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row * 100) for _ in range(side // 100)) + z.compress(row * (side % 100)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def write_outside(outside: Path) -> None:
    """What lies beside the input: a secret image and caption that no job may read."""
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.png").write_bytes(_png((1, 2, 3)))
    (outside / "secret.txt").write_text(SECRET_CAPTION + "\n")


def common_files(root: Path) -> list[Case]:
    """Files that are the same in a folder and in a bucket."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ok").mkdir(exist_ok=True)
    (root / "ok/a.png").write_bytes(_png((200, 30, 30)))
    (root / "ok/a.txt").write_text("a red square\n")
    (root / f"{WEIRD_NAME}.png").write_bytes(_png((30, 200, 30)))
    (root / f"{WEIRD_NAME}.txt").write_text(SCRIPT_CAPTION + "\n")
    (root / "bomb.png").write_bytes(png_bomb())
    (root / "bomb.txt").write_text("all black, if you have 3 GB to spare\n")
    (root / "big.png").write_bytes(_png((30, 30, 200)))
    with open(root / "big.txt", "wb") as f:  # a 50 MB caption file: one line, far over any caption
        f.truncate(BIG_CAPTION_BYTES)
    (root / "long.png").write_bytes(_png((90, 90, 90)))
    (root / "long.txt").write_text("w" * 5000 + "\n")
    (root / "dup.jpg").write_bytes(_png((1, 1, 1)))  # both would write dup.png
    (root / "dup.png").write_bytes(_png((2, 2, 2)))
    return [Case("ok/a.png", True, caption="a red square"),
            Case("dup.jpg", True),
            Case("dup.png", False, "its output dup.png is already that of dup.jpg"),
            Case(f"{WEIRD_NAME}.png", True, caption=SCRIPT_CAPTION),
            Case("bomb.png", False, "image too large: 900,000,000 pixels"),
            Case("big.png", False, "caption file is 50.0 MB"),
            Case("long.png", False, "caption is 5000 characters")]


def write_hostile_folder(root: Path, outside: Path) -> list[Case]:
    """A local input folder with every hostile entry; returns one Case per entry that gets a row (the case of
    over.png holds for a limit of 30,000 pixels, under which the bomb's 110 KB can still be read)."""
    write_outside(outside)
    cases = common_files(root)
    os.symlink(outside / "secret.png", root / "link_out.png")
    os.symlink(outside, root / "linkdir")
    os.symlink(root / "ok/a.png", root / "link_in.png")  # inside the root: followed
    (root / "link_in.txt").write_text("followed inside\n")
    os.symlink(root / "nowhere.png", root / "broken.png")
    (root / "cap_out.png").write_bytes(_png((10, 10, 10)))
    os.symlink(outside / "secret.txt", root / "cap_out.txt")
    os.mkfifo(root / "fifo.png")  # a reader that opened it would wait forever for a writer
    (root / os.fsdecode(b"caf\xe9.png")).write_bytes(_png((3, 3, 3)))  # Latin-1 bytes: not a UTF-8 name
    (root / "over.png").write_bytes(_png((4, 4, 4), size=200))  # 40,000 pixels: over a limit of 30,000
    (root / "over.txt").write_text("too many pixels for a small limit\n")
    return cases + [
        Case("link_out.png", False, "symlink pointing outside"),
        Case("linkdir", False, "symlinked folder pointing outside"),
        Case("link_in.png", True, caption="followed inside"),
        Case("broken.png", False, "broken symlink"),
        Case("cap_out.png", False, "caption file cap_out.txt not read: symlink pointing outside"),
        Case("cap_out.txt", False, "symlink pointing outside"),
        Case("fifo.png", False, "not a regular file"),
        Case("caf\\udce9.png", False, "not valid UTF-8"),
        Case("over.png", False, "40,000 pixels, over the limit of 30,000"),  # with --max-image-pixels 30000
    ]


def hostile_keys(escape_to: Path) -> list[tuple[str, bytes, Case]]:
    """(key relative to the input prefix, bytes, case) for keys that are legal in S3 but not as paths. A
    job that joined them to a local output would write under `escape_to` (an absolute folder)."""
    target = str(escape_to).lstrip("/")
    png = _png((5, 5, 5))
    return [
        ("../" * 30 + f"{target}/dotdot/pwn.png", png, Case("../" * 30 + f"{target}/dotdot/pwn.png", False, "'..'")),
        (f"/{target}/abs/x.png", png, Case(f"/{target}/abs/x.png", False, "absolute")),
        ("a/./b.png", png, Case("a/./b.png", False, "'.'")),
        ("a//c.png", png, Case("a//c.png", False, "an empty segment")),
        ("..\\..\\w.png", png, Case("..\\..\\w.png", False, "backslash")),
    ]


__all__ = ["Case", "png_bomb", "write_outside", "common_files", "write_hostile_folder", "hostile_keys",
           "WEIRD_NAME", "SCRIPT_CAPTION", "SECRET_CAPTION"]
