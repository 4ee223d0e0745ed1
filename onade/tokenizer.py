"""Caption tokenizer: a sentencepiece model trained on the captions that ship with the data.

    tok = Tokenizer.train(captions, "shards/tokenizer.model", vocab_size=512)   # writes the model file
    tok = Tokenizer.from_file("shards/tokenizer.model")
    tokens_BT, lengths_B = tok.encode_batch(["a red circle", "a blue box"], max_tokens=32)

Ids 0-3 are reserved: pad, unk, bos, eos. `encode` adds neither bos nor eos, so an empty caption has
length 0. Text is NFKC-normalised and case-folded, so "Red" and "red" are one token.
torch is imported only by `encode_batch`, so shard-building processes stay light.
The model lives in memory as its serialized proto, which is also how it pickles (Ray Data ships the
tokenizer to its workers), so no file is needed after loading.
"""

from __future__ import annotations

import io
import os
import random
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sentencepiece as spm

if TYPE_CHECKING:
    import torch

MODEL_TYPES = ("unigram", "word", "bpe")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. \d+ vs (\d+)")


class Tokenizer:
    pad_id = 0
    unk_id = 1
    bos_id = 2
    eos_id = 3

    def __init__(self, model_proto: bytes):
        if not model_proto:
            raise ValueError("tokenizer model is empty: rebuild it with Tokenizer.train or data.make_shards")
        self._proto = bytes(model_proto)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        except RuntimeError as e:
            raise ValueError(f"not a sentencepiece tokenizer model ({e}); rebuild it with Tokenizer.train") from e
        ids = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if ids != (self.pad_id, self.unk_id, self.bos_id, self.eos_id):
            raise ValueError(f"tokenizer model reserves ids pad/unk/bos/eos = {ids}, expected (0, 1, 2, 3): "
                             "train it with Tokenizer.train")

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], path: str | os.PathLike | None, vocab_size: int = 512,
              model_type: str = "unigram", max_sentences: int = 300_000) -> "Tokenizer":
        """Train on `texts` (captions, streamed from memory, no temp files) and write the model to `path`.

        `vocab_size` is an upper bound: a corpus too small to fill it yields a smaller vocabulary, and
        one that is below the number of distinct characters is raised to it. Past `max_sentences`
        lines a fixed-seed uniform sample is used, so memory stays bounded on huge caption sets.
        Training is deterministic (single-threaded, seeded sampling): the same captions give a
        byte-identical model file.
        """
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {model_type!r}")
        if vocab_size < 8:
            raise ValueError(f"vocab_size must be at least 8 (4 ids are reserved), got {vocab_size}")
        if max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1, got {max_sentences}")
        lines = _sample_lines(texts, max_sentences)
        if not lines:
            raise ValueError("no caption text to train a tokenizer on: every caption is empty")
        proto = _train_proto(lines, vocab_size, model_type)
        tok = cls(proto)
        if path is not None:
            tok.save(path)
        return tok

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "Tokenizer":
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"tokenizer file {str(p)!r} does not exist: it ships as tokenizer.model beside the shards")
        return cls(p.read_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "Tokenizer":
        return cls(data)

    def to_bytes(self) -> bytes:
        return self._proto

    def save(self, path: str | os.PathLike) -> None:
        """Write the model file atomically (a reader never sees half a model)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".partial", dir=p.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._proto)
            os.replace(tmp, p)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def __reduce__(self):
        return (Tokenizer.from_bytes, (self._proto,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and other._proto == self._proto

    def __hash__(self) -> int:
        return hash(self._proto)

    # ---- use ----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text.strip(), out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids if int(i) != self.pad_id])

    def pieces(self, text: str) -> list[str]:
        return self._sp.encode(text.strip(), out_type=str)

    def encode_batch(self, texts: list[str], max_tokens: int) -> tuple["torch.Tensor", "torch.Tensor"]:
        """Tokens [B, max_tokens] (long, right-padded with pad_id, truncated) and lengths [B] (long)."""
        import torch

        tokens_BT, lengths_B = self.encode_batch_numpy(texts, max_tokens)
        return torch.from_numpy(tokens_BT), torch.from_numpy(lengths_B)

    def encode_batch_numpy(self, texts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """As `encode_batch`, as int64 numpy arrays (for data pipelines that stay in numpy)."""
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        tokens_BT = np.full((len(texts), max_tokens), self.pad_id, dtype=np.int64)
        lengths_B = np.zeros(len(texts), dtype=np.int64)
        if len(texts):
            encoded = self._sp.encode([str(t).strip() for t in texts], out_type=int)
            for b, ids in enumerate(encoded):
                ids = ids[:max_tokens]
                tokens_BT[b, : len(ids)] = ids
                lengths_B[b] = len(ids)
        return tokens_BT, lengths_B


def _sample_lines(texts: Iterable[str], max_sentences: int, seed: int = 0) -> list[str]:
    """Non-empty lines of `texts` in order, or a seeded reservoir sample of `max_sentences` of them."""
    rng = random.Random(seed)
    kept: list[tuple[int, str]] = []
    n = 0
    for t in texts:
        # sentencepiece treats a newline inside a sentence as an ordinary character; split instead.
        for ln in str(t).splitlines():
            ln = ln.strip()
            if not ln:
                continue
            if len(kept) < max_sentences:
                kept.append((n, ln))
            else:
                j = rng.randrange(n + 1)
                if j < max_sentences:
                    kept[j] = (n, ln)
            n += 1
    kept.sort()
    return [ln for _, ln in kept]


def _train_proto(lines: list[str], vocab_size: int, model_type: str) -> bytes:
    for _ in range(2):
        buf = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
                pad_id=Tokenizer.pad_id, unk_id=Tokenizer.unk_id, bos_id=Tokenizer.bos_id,
                eos_id=Tokenizer.eos_id,
                # Captions are short and the corpus may be tiny: a vocabulary the corpus cannot fill is
                # allowed to come out smaller instead of failing.
                hard_vocab_limit=False, character_coverage=1.0, normalization_rule_name="nmt_nfkc_cf",
                # One thread keeps training deterministic; caption corpora train in seconds anyway.
                num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
                max_sentence_length=16384, minloglevel=2)
            return buf.getvalue()
        except RuntimeError as e:
            m = _TOO_SMALL.search(str(e))
            if not m:
                raise ValueError(f"sentencepiece could not train a tokenizer: {e}") from e
            # Every distinct character needs an id; raise the vocabulary to that minimum.
            vocab_size = int(m.group(1))
    raise AssertionError("unreachable: the retry uses sentencepiece's own minimum vocabulary")


__all__ = ["Tokenizer", "MODEL_TYPES"]
