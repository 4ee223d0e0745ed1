"""The caption tokenizer: reserved ids, batch encoding, tiny corpora, determinism, no files left behind."""

import pickle

import pytest
import torch

from onade.tokenizer import Tokenizer

CAPTIONS = [
    "a red circle on a blue background",
    "a green square in the middle of a white striped background",
    "the centre shows a yellow triangle; the background is black",
    "Blue cross, red background",
] * 5


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return Tokenizer.train(CAPTIONS, tmp_path_factory.mktemp("tok") / "tokenizer.model", vocab_size=64)


def test_reserved_ids_and_file_roundtrip(tmp_path):
    path = tmp_path / "sub" / "tokenizer.model"
    tok = Tokenizer.train(CAPTIONS, path, vocab_size=64)
    assert (Tokenizer.pad_id, Tokenizer.unk_id, Tokenizer.bos_id, Tokenizer.eos_id) == (0, 1, 2, 3)
    assert path.is_file() and path.read_bytes() == tok.to_bytes()
    again = Tokenizer.from_file(path)
    assert again == tok and Tokenizer.from_bytes(tok.to_bytes()) == tok
    assert again.encode("a red circle") == tok.encode("a red circle")
    assert 8 <= tok.vocab_size <= 64
    ids = tok.encode("a red circle on a blue background")
    assert ids and min(ids) >= 4  # known text never maps to pad/unk/bos/eos
    assert tok.decode(ids) == "a red circle on a blue background"


def test_case_folded_and_unknown_characters(tok):
    assert tok.encode("A RED Circle") == tok.encode("a red circle")
    assert Tokenizer.unk_id in tok.encode("ζ")


def test_encode_batch_pads_truncates_and_handles_empty(tok):
    texts = ["a red circle on a blue background", "", "blue"]
    full = [tok.encode(t) for t in texts]
    tokens, lengths = tok.encode_batch(texts, max_tokens=4)
    assert tokens.dtype == torch.long and lengths.dtype == torch.long
    assert tokens.shape == (3, 4) and lengths.shape == (3,)
    assert lengths.tolist() == [min(4, len(f)) for f in full]
    assert lengths[1] == 0 and tokens[1].eq(Tokenizer.pad_id).all()
    for b, f in enumerate(full):
        n = min(4, len(f))
        assert tokens[b, :n].tolist() == f[:n]
        assert tokens[b, n:].eq(Tokenizer.pad_id).all()
    t0, l0 = tok.encode_batch([], max_tokens=4)
    assert t0.shape == (0, 4) and l0.shape == (0,)
    with pytest.raises(ValueError, match="max_tokens"):
        tok.encode_batch(["x"], 0)


def test_training_is_deterministic():
    a = Tokenizer.train(CAPTIONS, None, vocab_size=48)
    b = Tokenizer.train(list(CAPTIONS), None, vocab_size=48)
    assert a.to_bytes() == b.to_bytes()


@pytest.mark.parametrize("model_type", ["unigram", "bpe", "word"])
def test_tiny_corpus_and_tiny_vocab_work(model_type):
    tiny = Tokenizer.train(["hi"], None, vocab_size=512, model_type=model_type)
    assert tiny.vocab_size < 512 and tiny.encode("hi")
    # Fewer ids than distinct characters: raised to what the corpus needs instead of failing.
    small = Tokenizer.train(["abcdefghijklmnopqrstuvwxyz"], None, vocab_size=8, model_type=model_type)
    if model_type == "word":
        assert small.encode("abcdefghijklmnopqrstuvwxyz") == [4]  # the one word is the whole vocabulary
    else:
        assert small.vocab_size >= 4 + 26
        assert Tokenizer.unk_id not in small.encode("xyz")


def test_word_model_gives_one_token_per_known_word():
    tok = Tokenizer.train(CAPTIONS, None, vocab_size=200, model_type="word")
    assert len(tok.encode("a red circle")) == 3
    assert tok.encode("a zebra")[1] == Tokenizer.unk_id


def test_multiline_texts_are_split_into_sentences():
    tok = Tokenizer.train(["red circle\nblue square"], None, vocab_size=64, model_type="word")
    assert Tokenizer.unk_id not in tok.encode("red circle blue square")


def test_no_temp_files_left_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    Tokenizer.train(CAPTIONS, None, vocab_size=32)
    Tokenizer.train(CAPTIONS, tmp_path / "out" / "tokenizer.model", vocab_size=32)
    leftovers = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert leftovers == ["out", "out/tokenizer.model"]


def test_pickles_without_a_file(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone == tok and clone.encode("red circle") == tok.encode("red circle")


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no caption text"):
        Tokenizer.train(["", "   ", "\n"], None)
    with pytest.raises(ValueError, match="model_type"):
        Tokenizer.train(CAPTIONS, None, model_type="wordpiece")
    with pytest.raises(ValueError, match="vocab_size"):
        Tokenizer.train(CAPTIONS, None, vocab_size=4)
    with pytest.raises(ValueError, match="not a sentencepiece"):
        Tokenizer.from_bytes(b"definitely not a model")
    with pytest.raises(ValueError, match="does not exist"):
        Tokenizer.from_file(tmp_path / "missing.model")


def test_large_corpora_are_sampled_deterministically():
    from onade.tokenizer import _sample_lines

    texts = [f"caption number {i} word{i % 7}" for i in range(1000)]
    sample = _sample_lines(iter(texts), 50)
    assert len(sample) == 50 and sample == _sample_lines(texts, 50)
    assert sample == sorted(sample, key=texts.index)  # corpus order kept
    assert len({t.split()[-1] for t in sample}) == 7  # spread over the whole corpus, not its head
    assert _sample_lines(texts, 5000) == texts
    a = Tokenizer.train(iter(texts), None, vocab_size=40, max_sentences=50)
    assert a.to_bytes() == Tokenizer.train(texts, None, vocab_size=40, max_sentences=50).to_bytes()
