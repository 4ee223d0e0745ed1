import torch

import onade
from onade.config import PRESETS, get_preset, receptive_field
from tests.helpers import random_batch, tiny_model


def test_output_shape_and_dtype():
    model = onade.build_model("debug")
    x, mask, tokens, lengths = random_batch(2, 32, vocab=model.cfg.vocab_size)
    logits = model(x, mask, tokens, lengths)
    assert logits.shape == (2, 32, 32, 3, 256) and logits.dtype == torch.float32


def test_hidden_values_never_influence_any_logit():
    model = tiny_model()
    x, mask, tokens, lengths = random_batch(3, 8)
    before = model(x, mask, tokens, lengths)
    g = torch.Generator().manual_seed(1)
    x2 = torch.where(mask, x, torch.randint(0, 256, x.shape, generator=g, dtype=torch.uint8))
    assert not torch.equal(x2, x)
    assert torch.equal(model(x2, mask, tokens, lengths), before)


def test_observed_values_do_influence_logits_across_the_whole_image():
    model = tiny_model(image_size=8)
    x, _, tokens, lengths = random_batch(1, 8)
    mask = torch.ones_like(x, dtype=torch.bool)
    x2 = x.clone()
    x2[0, 0, 0, 0] ^= 0xFF  # opposite corner from (7, 7)
    diff = (model(x, mask, tokens, lengths) - model(x2, mask, tokens, lengths)).abs()
    assert diff[0, 7, 7].max() > 1e-6, "the receptive field must cover the image corner to corner"


def test_presets_cover_their_image():
    for name in PRESETS:
        cfg = get_preset(name).model
        assert receptive_field(cfg) >= 2 * cfg.image_size - 1


def test_caption_padding_changes_nothing():
    model = tiny_model()
    x, mask, tokens, lengths = random_batch(3, 8, seq=5)
    before = model(x, mask, tokens, lengths)
    junk = torch.randint(4, 20, (3, 7))
    padded = torch.cat([tokens, junk], dim=1)  # positions >= length are padding, whatever they hold
    assert torch.allclose(model(x, mask, padded, lengths), before, atol=1e-5)


def test_caption_changes_logits():
    model = tiny_model()
    x, mask, tokens, lengths = random_batch(2, 8)
    other = (tokens + 1).clamp(max=19)
    assert not torch.allclose(model(x, mask, tokens, lengths), model(x, mask, other, lengths))


def test_empty_caption_adds_nothing():
    model = tiny_model()
    x, mask, tokens, lengths = random_batch(2, 8)
    zero = torch.zeros_like(lengths)
    out = model(x, mask, tokens, zero)
    assert torch.isfinite(out).all()
    assert torch.equal(out, model(x, mask, torch.randint(4, 20, tokens.shape), zero))
    no_text = tiny_model(merge_every=0)
    no_text.load_state_dict({k: v for k, v in model.state_dict().items() if k in no_text.state_dict()})
    assert torch.allclose(out, no_text(x, mask, tokens, zero), atol=1e-5)


def test_empty_caption_gradients_are_finite():
    model = tiny_model().train()
    x, mask, tokens, lengths = random_batch(2, 8)
    model(x, mask, tokens, torch.tensor([0, 3])).logsumexp(-1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_logits_at_matches_forward():
    model = tiny_model()
    x, mask, tokens, lengths = random_batch(2, 8)
    where = ~mask.all(-1)
    full = model(x, mask, tokens, lengths)
    assert torch.allclose(model.logits_at(x, mask, tokens, lengths, where), full[where], atol=1e-5)


def test_onehot_input_matches_its_definition_and_hides_values():
    model = tiny_model(input_mode="onehot")
    x, mask, tokens, lengths = random_batch(2, 8)
    x2 = torch.where(mask, x, 255 - x)
    assert torch.equal(model(x, mask, tokens, lengths), model(x2, mask, tokens, lengths))


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    x, mask, tokens, lengths = random_batch(2, 8)
    for args, needle in [((x, mask.float(), tokens, lengths), "mask"), ((x[..., :2], mask, tokens, lengths), "x must"),
                         ((x, mask, tokens, lengths[:1]), "lengths")]:
        try:
            model(*args)
        except ValueError as e:
            assert needle in str(e)
        else:
            raise AssertionError(f"no error for {needle}")
