"""onade.counter_rng: Threefry-2x32-20 matches Random123's known answers, and its uniforms are a function of
(key, draw, position) alone."""

import pytest
import torch

from onade.counter_rng import threefry2x32, uniforms

# Random123's kat_vectors for threefry2x32_20: (counter, key) -> output words (also JAX's test vectors).
KNOWN = [((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
         ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
         ((0x243F6A88, 0x85A308D3), (0x13198A2E, 0x03707344), (0xC4923A9C, 0x483DF7A0))]


@pytest.mark.parametrize("counter,key,expected", KNOWN)
def test_threefry_gives_random123s_known_answers(counter, key, expected):
    words = [torch.tensor(v, dtype=torch.int64) for v in (*key, *counter)]
    assert tuple(int(w) for w in threefry2x32(*words)) == expected


def test_a_rows_numbers_depend_on_its_key_draw_and_position_only():
    keys = torch.tensor([[1, 2], [3, 4], [1, 2]], dtype=torch.int64)
    wide, narrow = uniforms(keys, 9, 101), uniforms(keys[1:], 9, 7)
    assert torch.equal(wide[1, :7], narrow[0]) and torch.equal(wide[0], wide[2])  # same key, same numbers
    assert not torch.equal(wide[0], wide[1])
    assert not torch.equal(uniforms(keys, 10, 101)[0], wide[0])  # another draw, other numbers


def test_uniforms_are_uniform_on_the_unit_interval():
    u = uniforms(torch.tensor([[5, 6], [7, 8]], dtype=torch.int64), 0, 50_000).flatten()
    assert 0 <= float(u.min()) and float(u.max()) < 1 and u.dtype == torch.float32
    counts = torch.histc(u, bins=20, min=0, max=1)
    expected = len(u) / 20
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 45  # 19 degrees of freedom: p ~ 0.0007 above 45
    pairs = u.view(-1, 2)  # the two words of one block are not correlated
    assert abs(float(torch.corrcoef(pairs.T)[0, 1])) < 0.02
