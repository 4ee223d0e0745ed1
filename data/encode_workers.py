"""make_shards' worker processes: each input read, decoded and encoded as a sample's image (`encode_item`),
in chunks (`encode_chunk`), over a pool whose results keep the input order (`ordered_map`).

Kept apart from make_shards so worker processes import only PIL, numpy and the data helpers.
"""

from __future__ import annotations

import collections
import itertools
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator

from data import images, sources, storage, untrusted

CHUNK = 32  # items per worker task: amortises inter-process overhead, keeps the queue short


def encode_item(item: sources.Item, size: int, resize: str, fmt: str,
                max_pixels: int = untrusted.DEFAULT_MAX_IMAGE_PIXELS) -> tuple:
    """("ok", source, captions, encoded image, (w, h), mode) or ("skip", source, reason)."""
    if item.skip:
        return ("skip", item.source, item.skip)
    data = item.data
    if data is None:
        try:
            data = untrusted.read(item.path, item.root or os.path.dirname(item.path),
                                  untrusted.max_image_bytes(max_pixels), "image file",
                                  untrusted.IMAGE_SIZE_HINT)
        except storage.StorageError:
            return ("skip", item.source, "file not found")
        except untrusted.UnsafeInput as e:
            return ("skip", item.source, f"not read: {e}")
        except OSError as e:
            return ("skip", item.source, f"unreadable file ({e.strerror or type(e).__name__})")
    try:
        img, orig, mode = images.load(data, size, resize)
    except images.ImageSkip as e:
        return ("skip", item.source, str(e))
    return ("ok", item.source, item.captions, images.encode(img, fmt), orig, mode)


def encode_chunk(args: tuple) -> list[tuple]:
    chunk, size, resize, fmt, max_pixels = args
    with images.pixel_limit(max_pixels):  # PIL's limit is per process, and this may be a worker's
        return [encode_item(it, size, resize, fmt, max_pixels) for it in chunk]


def ordered_map(fn: Callable, tasks: Iterable, workers: int, max_pending: int) -> Iterator:
    """fn over tasks in `workers` processes, results in input order, at most `max_pending` tasks in flight.

    Pool.imap would read the whole input ahead (holding every image in memory when re-sharding);
    the bounded window keeps memory flat however large the input is.
    """
    if workers <= 1:
        for t in tasks:
            yield fn(t)
        return
    # forkserver: workers do not inherit the parent's threads (the S3 client's) or open sockets.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["data.encode_workers"])
    with ctx.Pool(workers) as pool:
        pending: collections.deque = collections.deque()
        for t in tasks:
            pending.append(pool.apply_async(fn, (t,)))
            if len(pending) >= max_pending:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def chunks(it: Iterable, n: int) -> Iterator[list]:
    it = iter(it)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


__all__ = ["CHUNK", "encode_item", "encode_chunk", "ordered_map", "chunks"]
