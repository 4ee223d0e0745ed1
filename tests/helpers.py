"""Small builders shared by unit tests (tiny real models; nothing is faked)."""

import io
import tarfile

import torch

from onade.config import ModelConfig
from onade.model import build_model


def tiny_model(image_size: int = 8, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    kw = dict(image_size=image_size, width=16, num_blocks=3, dilations=(1, 2, 4), embed_dim=4, norm_groups=4,
              vocab_size=20, text_dim=16, merge_every=1, num_heads=2)
    kw.update(overrides)
    model = build_model(ModelConfig(**kw))
    # Fresh mergers add nothing (zero-initialised values); randomise them so tests see the caption path.
    for merger in model.mergers.values():
        torch.nn.init.normal_(merger.value.weight, std=0.5)
    return model.eval()


def random_batch(batch: int, image_size: int, seq: int = 6, vocab: int = 20, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (batch, image_size, image_size, 3), generator=g, dtype=torch.uint8)
    observed = torch.rand(batch, image_size, image_size, 3, generator=g) < 0.5
    tokens = torch.randint(4, vocab, (batch, seq), generator=g)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    return x, observed, tokens, lengths


def tar_bytes(members: list[tuple[str, bytes]], cut_inside: str | None = None) -> bytes:
    """A tar of (name, data) members; with `cut_inside`, it ends partway through that member's data
    (a truncated upload)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buf.getvalue()
    if cut_inside:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            data = data[: tar.getmember(cut_inside).offset_data + 100]
    return data
