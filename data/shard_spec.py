"""Turn a user's description of a set of shards into the list of shard URLs.

A spec is one of, or a comma-separated list of:
  - a folder or prefix (`shards/`, `s3://bucket/run1`): its `manifest.json` if present (only the
    shards a finished build recorded), else every `*.tar` directly under it;
  - a manifest file (`.../manifest.json`);
  - a shard URL (`.../shard-000003.tar`);
  - a brace pattern (`s3://b/p/shard-{000000..000099}.tar`, `x-{a,b}.tar`), expanded here because
    Ray's and pyarrow's readers take literal paths.
Local and s3:// specs cannot be mixed in one list (one reader filesystem per dataset).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys

import braceexpand

from data import storage, untrusted
# The tokenizer make_shards writes beside the shards is the file a checkpoint ships: training copies it there.
from onade.export_format import TOKENIZER_FILE as TOKENIZER

MANIFEST = "manifest.json"
MAX_EXPANDED = 1_000_000  # names one brace pattern may expand to
_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?\}")


def split_top_level(spec: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside braces: `a-{1,2}.tar,b.tar` -> ["a-{1,2}.tar", "b.tar"]."""
    parts, depth, cur = [], 0, []
    for ch in spec:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced '}}' in shard spec {spec!r}")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced '{{' in shard spec {spec!r}")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def expand_braces(pattern: str) -> list[str]:
    """Bash-style brace expansion by `braceexpand` (webdataset's own): `{000..010}` (zero padding kept),
    `{0..10..2}`, `{a,b}`, nested, several. Backslashes are kept as they are (escape=False): they are part
    of a name, never escapes."""
    ranges = 1  # numeric ranges alone can name billions: refuse those before generating anything
    for lo, hi, step in _RANGE.findall(pattern):
        ranges *= abs(int(hi) - int(lo)) // max(1, abs(int(step or 1))) + 1
    if ranges > MAX_EXPANDED:
        raise ValueError(f"{pattern!r} expands to over {MAX_EXPANDED:,} names; that is surely a typo")
    try:
        names = list(itertools.islice(braceexpand.braceexpand(pattern, escape=False), MAX_EXPANDED + 1))
    except braceexpand.UnbalancedBracesError:
        raise ValueError(f"unbalanced braces in {pattern!r}: a pattern looks like shard-{{000000..000099}}.tar"
                         ) from None
    if len(names) > MAX_EXPANDED:
        raise ValueError(f"{pattern!r} expands to over {MAX_EXPANDED:,} names; that is surely a typo")
    return names


def _from_manifest(url: str, refused: list[tuple[str, str]]) -> list[str]:
    """The shards a manifest lists, each a plain name under the manifest's folder (inside it, locally, once
    symlinks are resolved); any other name goes to `refused` with the reason."""
    data = storage.read_bytes(url, max_bytes=untrusted.MAX_MANIFEST_BYTES)  # TooLarge names the limit
    try:
        m = json.loads(data)
        names = [s["name"] for s in m["shards"]]
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise ValueError(f"{url} is not a shard manifest written by data.make_shards ({type(e).__name__}); pass "
                         "the shards themselves or their folder instead") from None
    base = storage.dirname(url)
    out = []
    for n in names:
        try:
            shard = storage.join(base, untrusted.safe_rel(str(n), "shard name"))
            if not storage.is_s3(shard) and os.path.lexists(shard) and not untrusted.inside(shard, base):
                raise untrusted.UnsafeInput(f"shard {n!r} is a symlink pointing outside {base!r}")
        except untrusted.UnsafeInput as e:
            refused.append((f"{storage.basename(url)}:{untrusted.printable(str(n))}", str(e)))
            continue
        out.append(shard)
    return out


def _list_prefix(url: str, refused: list[tuple[str, str]]) -> list[str]:
    """The *.tar directly under a folder or prefix; locally, symlinks out of the folder go to `refused`."""
    if storage.is_s3(url):
        return storage.list_files(url, suffix=".tar")
    if not os.path.isdir(url):
        raise ValueError(f"shard folder {url!r} does not exist")
    out = []
    for e in untrusted.walk_local(url, recursive=False):
        if e.rel.endswith(".tar"):
            if e.problem:
                refused.append((e.url, e.problem))
            else:
                out.append(e.url)
    return out


def resolve_shards(spec: str | list[str], check: bool = True, refused: list[tuple[str, str]] | None = None
                   ) -> list[str]:
    """Every shard URL the spec names, in order; ValueError if none, or (with `check`) if any is missing.
    Shards a listing or manifest names but that may not be read (untrusted.py: unsafe names, symlinks out of
    their folder) are left out and appended to `refused` as (where, why), or printed when it is None."""
    report = refused is None
    refused = [] if refused is None else refused
    items = list(spec) if isinstance(spec, (list, tuple)) else split_top_level(str(spec))
    if not items:
        raise ValueError("empty shard spec: give a folder, s3:// prefix, manifest.json, shard URLs or a "
                         "brace pattern like shard-{000000..000009}.tar")
    urls: list[str] = []
    named: list[str] = []  # URLs that came from the spec or a manifest, not from a listing
    for item in items:
        for one in expand_braces(str(item)):
            if one.endswith(".json"):
                found = _from_manifest(one, refused)
                named.extend(found)
            elif one.endswith(".tar"):
                found = [one]
                named.append(one)
            else:
                manifest = storage.join(one, MANIFEST)
                if storage.exists(manifest):
                    found = _from_manifest(manifest, refused)
                    named.extend(found)
                else:
                    found = _list_prefix(one, refused)
                if not found:
                    why = f" (refused: {'; '.join(f'{w}: {r}' for w, r in refused[:3])})" if refused else ""
                    raise ValueError(f"no shards (*.tar) found under {one!r}{why}: build them with "
                                     "`python -m data.make_shards SRC DEST`")
            urls.extend(found)
    kinds = {storage.is_s3(u) for u in urls}
    if len(kinds) > 1:
        raise ValueError("shard spec mixes local paths and s3:// URLs; read them as two datasets")
    if check and named:
        _check_exist(named)
    if report:
        for where, why in refused:
            print(f"warning: shard {where} not read: {why}", file=sys.stderr)
    return urls


def _check_exist(urls: list[str]) -> None:
    """One listing per folder instead of one request per shard, then name what is missing."""
    by_dir: dict[str, list[str]] = {}
    for u in urls:
        by_dir.setdefault(storage.dirname(u), []).append(u)
    missing = []
    for d, us in by_dir.items():
        try:
            present = set(storage.list_files(d, suffix=".tar"))
        except storage.StorageError:
            present = set()
        if not storage.is_s3(d):
            present = {storage.dirname(p) + "/" + storage.basename(p) for p in present}
            us = [storage.dirname(u) + "/" + storage.basename(u) for u in us]
        missing.extend(u for u in us if u not in present)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} of {len(urls)} shards do not exist: {shown}")


def shards_home(spec: str | list[str]) -> str:
    """The folder a spec's shards (and their tokenizer.model and manifest.json) live in."""
    items = list(spec) if isinstance(spec, (list, tuple)) else split_top_level(str(spec))
    if not items:
        raise ValueError("empty shard spec")
    first = expand_braces(str(items[0]))[0]
    if first.endswith(".json") or first.endswith(".tar"):
        return storage.dirname(first)
    return first.rstrip("/")


__all__ = ["MANIFEST", "TOKENIZER", "split_top_level", "expand_braces", "resolve_shards", "shards_home"]
