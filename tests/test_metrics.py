import math

import numpy as np
import pytest
import torch

from onade.config import MaskConfig, ModelConfig
from onade.loss import nade_loss
from onade.masks import draw_observed, observed_except_center
from onade.metrics import center_bits, evaluate_batch, exact_hole_bits
from onade.model import build_model
from tests.helpers import random_batch, tiny_model


@torch.no_grad()
def test_exact_nll_is_the_chain_rule_and_does_not_depend_on_chunking():
    model = tiny_model(image_size=4, dilations=(1, 2), num_blocks=2)
    x, _, tokens, lengths = random_batch(2, 4)
    observed = observed_except_center(2, 4)  # hides a 2x2x3 = 12-subpixel hole
    bits = [exact_hole_bits(model, x, observed, tokens, lengths, chunk=c, generator=torch.Generator().manual_seed(0))
            for c in (1, 5, 64)]
    assert bits[0] == pytest.approx(bits[1], rel=1e-5) and bits[0] == pytest.approx(bits[2], rel=1e-5)

    # By hand: reveal the hole in the same order (same generator draw), one subpixel at a time.
    key = torch.rand(4 * 4 * 3, generator=torch.Generator().manual_seed(0))
    order = [int(i) for i in key.masked_fill(observed[0].flatten(), float("inf")).argsort()[:12]]
    m, nats = observed.clone(), 0.0
    for flat in order:
        h, w, c = flat // 12, (flat // 3) % 4, flat % 3
        logits = model(x, m, tokens, lengths)[:, h, w, c]
        nats += float(torch.nn.functional.cross_entropy(logits, x[:, h, w, c].long(), reduction="sum"))
        m[:, h, w, c] = True
    assert bits[0] == pytest.approx(nats / (2 * 12) / math.log(2), rel=1e-5)


def test_exact_nll_rejects_unequal_holes():
    model = tiny_model(image_size=4, dilations=(1, 2), num_blocks=2)
    x, _, tokens, lengths = random_batch(2, 4)
    observed = observed_except_center(2, 4)
    observed[1, 0, 0, 0] = False
    with pytest.raises(ValueError, match="same number"):
        exact_hole_bits(model, x, observed, tokens, lengths)


def test_evaluate_batch_reports_every_metric():
    model = tiny_model()
    x, _, tokens, lengths = random_batch(4, 8)
    out = evaluate_batch(model, x, tokens, lengths, num_masks=2, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"bits_per_dim", "exact_center_bits", "center_bits_true_caption",
                        "center_bits_shuffled_caption"}
    assert all(0 < v < 20 for v in out.values())
    assert out["center_bits_true_caption"] != out["center_bits_shuffled_caption"]


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_trained_model_reaches_the_known_entropy_and_never_beats_it():
    """Images: grey border, centre 4x4 hole of one of K colours named by the caption 50% of the time.
    Given the border, the hole has entropy log2(K) bits without the caption and 0 with it."""
    torch.manual_seed(0)
    K, side = 4, 8
    colours = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], dtype=torch.uint8)
    model = build_model(ModelConfig(image_size=side, width=32, num_blocks=3, dilations=(1, 2, 4), embed_dim=8,
                                    vocab_size=8, text_dim=32, merge_every=1))
    steps = 400
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-2, total_steps=steps)
    hole = ~observed_except_center(1, side)[0]
    g = torch.Generator().manual_seed(0)

    def batch(k_B, with_caption_B):
        x = torch.full((len(k_B), side, side, 3), 128, dtype=torch.uint8)
        x[:, hole.all(-1)] = colours[k_B][:, None].expand(-1, int(hole.all(-1).sum()), 3)
        tokens = (4 + k_B)[:, None]
        return x, tokens, with_caption_B.long()

    for _ in range(steps):
        k = torch.randint(0, K, (32,), generator=g)
        x, tokens, lengths = batch(k, torch.rand(32, generator=g) < 0.5)
        # Orderless masks within the hole, border observed: the conditionals the exact hole NLL asks for.
        orderless = draw_observed(MaskConfig(weights={"orderless": 1}), 32, side, g)[0]
        observed = orderless | observed_except_center(32, side)
        loss = nade_loss(model(x, observed, tokens, lengths), x, observed)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()

    model.eval()
    k = torch.arange(K)  # each colour exactly once: the empirical distribution is the true one
    num_hole = int(hole.sum())
    for with_caption, entropy_bits in ((False, math.log2(K)), (True, 0.0)):
        x, tokens, lengths = batch(k, torch.full((K,), with_caption))
        bits = exact_hole_bits(model, x, observed_except_center(K, side), tokens, lengths, chunk=16,
                               generator=torch.Generator().manual_seed(1))
        floor = entropy_bits / num_hole
        # Same ordering for every image: the average is a cross-entropy, so Gibbs' inequality bounds it below.
        assert bits >= floor - 1e-6
        assert bits < floor + 0.03, (with_caption, bits, floor)
    no_cap = center_bits(model, *batch(k, torch.zeros(K, dtype=torch.bool)))
    with_cap = center_bits(model, *batch(k, torch.ones(K, dtype=torch.bool)))
    assert with_cap < no_cap


def test_budget_bits_spans_one_shot_to_exact():
    """K = M passes is the exact chain-rule NLL (same ordering); one pass is the one-shot hole NLL."""
    from onade.metrics import budget_bits
    from onade.plans import uniform_plan

    model = tiny_model(8)
    x, _, tokens, lengths = random_batch(3, 8)
    observed = observed_except_center(3, 8)
    M = 48
    exact = exact_hole_bits(model, x, observed, tokens, lengths, chunk=7, generator=torch.Generator().manual_seed(4))
    full = budget_bits(model, x, observed, tokens, lengths, list(range(M + 1)),
                       generator=torch.Generator().manual_seed(4))
    assert full == pytest.approx(exact, abs=1e-4)
    one = budget_bits(model, x, observed, tokens, lengths, [0, M])
    assert one == pytest.approx(center_bits(model, x, tokens, lengths), abs=1e-4)
    # Passes in between score each variable given a prefix of the same ordering: a different number.
    four = budget_bits(model, x, observed, tokens, lengths, uniform_plan(M, 4),
                       generator=torch.Generator().manual_seed(4))
    assert four not in (pytest.approx(one, abs=1e-6), pytest.approx(full, abs=1e-6))
    with pytest.raises(ValueError, match="plan"):
        budget_bits(model, x, observed, tokens, lengths, [0, 10, 10, M])


def test_loss_profile_is_non_increasing_and_starts_at_the_one_shot_nll():
    from onade.metrics import loss_profile

    model = tiny_model(8)
    x, _, tokens, lengths = random_batch(4, 8)
    profile = loss_profile(model, [(x, tokens, lengths)] * 2, num_points=12, generator=torch.Generator().manual_seed(0))
    assert profile.hole_size == 48 and profile.num_images == 8 and profile.image_size == 8
    assert all(b <= a + 1e-9 for a, b in zip(profile.bits, profile.bits[1:]))
    # At t = 0 nothing of the hole is known: the raw estimate is the one-shot NLL. Pooling the first point
    # into a non-increasing curve only ever merges it with later points that are higher, so it can only rise.
    one_shot = center_bits(model, x, tokens, lengths)
    assert profile.bits[0] >= one_shot - 1e-3
    box = torch.zeros(8, 8, dtype=torch.bool)
    box[0:2, 0:3] = True
    assert loss_profile(model, [(x, tokens, lengths)], hole_HW=box, num_points=4).hole_size == 18


def test_the_hole_metrics_read_the_caption_once_per_batch():
    """Every forward pass of a batch reuses the reader's states (the sampler does the same): the chain rule
    over a 12-subpixel hole, one subpixel per pass, runs the caption reader once, not twelve times."""
    from onade.metrics import budget_bits, loss_profile

    model = tiny_model(image_size=4, dilations=(1, 2), num_blocks=2)
    x, _, tokens, lengths = random_batch(2, 4)
    observed = observed_except_center(2, 4)
    reads = []
    model.reader.register_forward_hook(lambda *_: reads.append(1))
    exact_hole_bits(model, x, observed, tokens, lengths, chunk=1)
    budget_bits(model, x, observed, tokens, lengths, list(range(13)), max_batch=2)
    loss_profile(model, [(x, tokens, lengths)], num_points=12, max_batch=2)
    assert len(reads) == 3


# ---- caption adherence on synthetic images (palette from data.synthetic) ---------------------------

@pytest.fixture(scope="module")
def samples():
    from data.synthetic import make_sample

    return [make_sample(i, 32, seed=3) for i in range(240)]


@pytest.fixture(scope="module")
def offset_samples():
    from data.synthetic import make_sample

    return [make_sample(i, 32, seed=4, variant="offset") for i in range(160)]


def test_centre_colour_reads_the_caption_colour_off_a_noisy_image(offset_samples):
    from data.synthetic import COLOURS
    from onade.metrics import centre_colour

    images = np.stack([img for img, _ in offset_samples])
    assert centre_colour(images, COLOURS) == [m.colour for _, m in offset_samples]
    # A background-coloured centre is read as the background, not the caption.
    flat = np.stack([np.broadcast_to(np.array(COLOURS[m.background], np.uint8), (32, 32, 3))
                     for _, m in offset_samples[:5]])
    assert centre_colour(flat, COLOURS) == [m.background for _, m in offset_samples[:5]]


def test_caption_adherence_scores_real_images_one_and_wrong_captions_low(samples):
    from data.synthetic import COLOURS, STRIPE, centre_box
    from onade.metrics import caption_adherence

    def adherence(images, colours, backgrounds):
        return caption_adherence(images, colours, backgrounds, COLOURS, (STRIPE,))

    images = np.stack([img for img, _ in samples])
    metas = [m for _, m in samples]
    colours, backgrounds = [m.colour for m in metas], [m.background for m in metas]
    assert adherence(images, colours, backgrounds) == {"hit": 1.0, "purity": 1.0}
    # Another image's caption colour: only right where the two colours happen to agree.
    wrong = colours[1:] + colours[:1]
    agree = np.mean([a == b for a, b in zip(colours, wrong)])
    got = adherence(images, wrong, backgrounds)
    assert got["hit"] == pytest.approx(agree) and got["purity"] == pytest.approx(agree)
    # Speckle: about half the shape's pixels turned to a third palette colour halve the purity.
    noisy = images.copy()
    left, top, right, bottom = centre_box(32)
    for img, m in zip(noisy, metas):
        third = next(c for c in COLOURS if c not in (m.colour, m.background))
        hole = img[top:bottom, left:right]
        ys, xs = np.nonzero((hole == np.array(COLOURS[m.colour], np.uint8)).all(-1))
        pick = (ys + xs) % 2 == 0
        hole[ys[pick], xs[pick]] = COLOURS[third]
    assert 0.4 < adherence(noisy, colours, backgrounds)["purity"] < 0.6
