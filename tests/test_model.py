import pytest
import torch
import torch.nn.functional as F

import onade
from onade.caption import AttentionMerger
from onade.config import LAYOUTS, PRESETS, get_preset, receptive_field
from tests.helpers import random_batch, tiny_model


def test_output_shape_and_dtype():
    model = onade.build_model("debug")
    x, observed, tokens, lengths = random_batch(2, 32, vocab=model.cfg.vocab_size)
    logits = model(x, observed, tokens, lengths)
    assert logits.shape == (2, 32, 32, 3, 256) and logits.dtype == torch.float32


def test_hidden_values_never_influence_any_logit():
    model = tiny_model()
    x, observed, tokens, lengths = random_batch(3, 8)
    before = model(x, observed, tokens, lengths)
    g = torch.Generator().manual_seed(1)
    x2 = torch.where(observed, x, torch.randint(0, 256, x.shape, generator=g, dtype=torch.uint8))
    assert not torch.equal(x2, x)
    assert torch.equal(model(x2, observed, tokens, lengths), before)


def test_observed_values_do_influence_logits_across_the_whole_image():
    model = tiny_model(image_size=8)
    x, _, tokens, lengths = random_batch(1, 8)
    observed = torch.ones_like(x, dtype=torch.bool)
    x2 = x.clone()
    x2[0, 0, 0, 0] ^= 0xFF  # opposite corner from (7, 7)
    diff = (model(x, observed, tokens, lengths) - model(x2, observed, tokens, lengths)).abs()
    assert diff[0, 7, 7].max() > 1e-6, "the receptive field must cover the image corner to corner"


def test_presets_cover_their_image():
    for name in PRESETS:
        cfg = get_preset(name).model
        assert receptive_field(cfg) >= 2 * cfg.image_size - 1


def test_caption_padding_changes_nothing():
    model = tiny_model()
    x, observed, tokens, lengths = random_batch(3, 8, seq=5)
    before = model(x, observed, tokens, lengths)
    junk = torch.randint(4, 20, (3, 7))
    padded = torch.cat([tokens, junk], dim=1)  # positions >= length are padding, whatever they hold
    assert torch.allclose(model(x, observed, padded, lengths), before, atol=1e-5)


def test_caption_changes_logits():
    model = tiny_model()
    x, observed, tokens, lengths = random_batch(2, 8)
    other = (tokens + 1).clamp(max=19)
    assert not torch.allclose(model(x, observed, tokens, lengths), model(x, observed, other, lengths))


def test_empty_caption_adds_nothing():
    model = tiny_model()
    x, observed, tokens, lengths = random_batch(2, 8)
    zero = torch.zeros_like(lengths)
    out = model(x, observed, tokens, zero)
    assert torch.isfinite(out).all()
    assert torch.equal(out, model(x, observed, torch.randint(4, 20, tokens.shape), zero))
    no_text = tiny_model(merge_every=0)
    no_text.load_state_dict({k: v for k, v in model.state_dict().items() if k in no_text.state_dict()})
    assert torch.allclose(out, no_text(x, observed, tokens, zero), atol=1e-5)


def test_empty_caption_gradients_are_finite():
    model = tiny_model().train()
    x, observed, tokens, lengths = random_batch(2, 8)
    model(x, observed, tokens, torch.tensor([0, 3])).logsumexp(-1).mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_logits_at_matches_forward():
    model = tiny_model()
    x, observed, tokens, lengths = random_batch(2, 8)
    where = ~observed.all(-1)
    full = model(x, observed, tokens, lengths)
    assert torch.allclose(model.logits_at(x, observed, tokens, lengths, where), full[where], atol=1e-5)


def test_onehot_input_matches_its_definition_and_hides_values():
    model = tiny_model(input_mode="onehot")
    x, observed, tokens, lengths = random_batch(2, 8)
    x2 = torch.where(observed, x, 255 - x)
    assert torch.equal(model(x, observed, tokens, lengths), model(x2, observed, tokens, lengths))


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    x, observed, tokens, lengths = random_batch(2, 8)
    for args, needle in [((x, observed.float(), tokens, lengths), "observed must"),
                         ((x[..., :2], observed, tokens, lengths), "x must"),
                         ((x, observed, tokens, lengths[:1]), "lengths")]:
        try:
            model(*args)
        except ValueError as e:
            assert needle in str(e)
        else:
            raise AssertionError(f"no error for {needle}")


def test_channels_last_auto_means_nhwc_on_cpu_only_and_never_changes_the_function():
    from onade.model import nhwc

    assert nhwc("auto", torch.device("cpu")) and not nhwc("auto", torch.device("cuda", 0))
    assert nhwc("on", torch.device("cuda", 0)) and not nhwc("off", torch.device("cpu"))
    x, observed, tokens, lengths = random_batch(2, 8)
    outs = []
    for layout in LAYOUTS:
        model = tiny_model(8, channels_last=layout)
        seen = []
        handle = model.blocks[0].conv1.register_forward_hook(
            lambda mod, args, out: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        with torch.no_grad():
            outs.append(model(x, observed, tokens, lengths))
        handle.remove()
        assert seen == [layout != "off"]  # on the CPU, auto is NHWC
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0], rtol=1e-4, atol=1e-4)


def test_activation_checkpointing_keeps_no_rng_state(monkeypatch):
    """The blocks draw no random numbers, so checkpointing them need not save and restore the generators'
    state (torch.utils.checkpoint does so by default, for the CPU and every device the inputs are on)."""
    saved = []
    real = torch.get_rng_state
    monkeypatch.setattr(torch, "get_rng_state", lambda: saved.append(1) or real())
    model = tiny_model(8, activation_checkpointing=True).train()
    x, observed, tokens, lengths = random_batch(2, 8)
    model(x, observed, tokens, lengths).float().logsumexp(-1).mean().backward()
    assert saved == []
    assert all(p.grad is not None for p in model.blocks.parameters())


def sdpa_attention(merger, f_BCHW, z_BTD, lengths_B):
    """The merger through F.scaled_dot_product_attention (W folded into the query: f^T W z = (W^T f)^T z):
    the library call the written-out merger must reproduce."""
    B, C, H, W = f_BCHW.shape
    T, G = z_BTD.shape[1], merger.num_heads
    f_BNC = f_BCHW.flatten(2).transpose(1, 2)
    q_BGNd = (f_BNC @ merger.W).view(B, H * W, G, -1).transpose(1, 2)
    k_BGTd = z_BTD.view(B, T, G, -1).transpose(1, 2)
    v_BGTc = merger.value(z_BTD).view(B, T, G, -1).transpose(1, 2)
    has_text_B = lengths_B > 0
    # An empty caption attends to every (padding) state, so no row is fully masked, and is zeroed after.
    attend_BT = (torch.arange(T, device=z_BTD.device)[None, :] < lengths_B[:, None]) | ~has_text_B[:, None]
    out_BGNc = F.scaled_dot_product_attention(q_BGNd, k_BGTd, v_BGTc, attn_mask=attend_BT[:, None, None, :])
    out_BNC = (out_BGNc * has_text_B[:, None, None, None]).transpose(1, 2).reshape(B, H * W, C)
    return f_BCHW + out_BNC.transpose(1, 2).reshape(B, C, H, W)


def merger_inputs(lengths, width=16, text_dim=16, num_heads=2, T=6, seed=0):
    torch.manual_seed(seed)
    merger = AttentionMerger(width, text_dim, num_heads)
    torch.nn.init.normal_(merger.W, std=0.5)
    torch.nn.init.normal_(merger.value.weight, std=0.5)
    torch.nn.init.normal_(merger.value.bias, std=0.5)
    lengths_B = torch.tensor(lengths)
    return merger, torch.randn(len(lengths), width, 5, 3), torch.randn(len(lengths), T, text_dim), lengths_B


@pytest.mark.parametrize("lengths", [[3, 6, 1], [1], [0, 4], [0], [1, 1, 6]])  # one token; all but one padding; empty
@pytest.mark.parametrize("num_heads", [1, 2])
def test_attention_merger_equals_scaled_dot_product_attention(lengths, num_heads):
    merger, f, z, lengths_B = merger_inputs(lengths, num_heads=num_heads)
    z.requires_grad_(True)
    out = merger(f, z, lengths_B)
    torch.testing.assert_close(out, sdpa_attention(merger, f, z, lengths_B), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert torch.isfinite(z.grad).all()
    for b, n in enumerate(lengths):
        assert (z.grad[b, n:] == 0).all(), "a padded state must not reach the output"
    empty = lengths_B == 0
    assert torch.equal(out[empty], f[empty]), "an empty caption adds nothing"


def test_attention_merger_ignores_padded_states():
    merger, f, z, lengths_B = merger_inputs([2, 5, 1, 0])
    z2 = z.clone()
    for b, n in enumerate(lengths_B.tolist()):
        z2[b, n:] = torch.randn_like(z2[b, n:]) * 100
    assert not torch.equal(z, z2)
    assert torch.equal(merger(f, z2, lengths_B), merger(f, z, lengths_B))


def test_attention_merger_under_bf16_autocast():
    merger, f, z, lengths_B = merger_inputs([3, 6, 1, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = merger(f.bfloat16(), z.bfloat16(), lengths_B)
        ref = sdpa_attention(merger, f.bfloat16(), z.bfloat16(), lengths_B)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=5e-2)
    assert torch.equal(out[3], f[3].bfloat16())


def test_model_under_bf16_autocast_matches_fp32_within_bf16_rounding():
    model = tiny_model()
    x, observed, tokens, lengths = random_batch(3, 8)
    lengths[0] = 0
    with torch.no_grad():
        ref = model(x, observed, tokens, lengths)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, observed, tokens, lengths)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_own_pixel_gives_the_head_the_pixels_known_channels_and_never_a_hidden_one():
    from onade.config import ModelConfig, config_from_dict
    from tests.helpers import random_batch, tiny_model

    model = tiny_model(8, own_pixel=True)
    x, _, tokens, lengths = random_batch(2, 8)
    observed = torch.ones_like(x, dtype=torch.bool)
    observed[:, 3, 4, 1:] = False  # pixel (3, 4): R known, G and B hidden
    base = model(x, observed, tokens, lengths)
    changed_hidden = x.clone()
    changed_hidden[:, 3, 4, 1:] ^= 0x55
    assert torch.equal(model(changed_hidden, observed, tokens, lengths), base)
    changed_known = x.clone()
    changed_known[:, 3, 4, 0] ^= 0x55
    assert not torch.allclose(model(changed_known, observed, tokens, lengths)[:, 3, 4], base[:, 3, 4])
    # The head reads the embedding beside the body's features; a config saved before the key builds without it.
    assert model.head_proj.in_features == 16 + 3 * 4
    old = config_from_dict({"model": {k: v for k, v in vars(ModelConfig()).items() if k != "own_pixel"}})
    assert old.model.own_pixel is False
