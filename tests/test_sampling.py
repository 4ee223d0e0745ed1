"""Invariants of the inpainting samplers, on a tiny real model (nothing is faked)."""

import copy
import math

import numpy as np
import pytest
import torch

import onade
from onade.config import STRATEGIES
from onade.masks import observed_except_box, observed_except_center
from onade.plans import LossProfile, cosine_plan, step_plan, uniform_plan
from onade.precision import resolve_precision
from onade.sampling import _draw, _set, example_seeds, gibbs_schedule, temperature_schedule
from tests.helpers import random_batch, tiny_model

pytestmark = pytest.mark.timeout(120)

def fast(strategy: str) -> dict:
    """A few passes; ancestral-gibbs resamples its blocks 5 subpixels per pass."""
    return dict(steps=6, chunk=5 if strategy == "ancestral-gibbs" else 1)


# Every sampler guarantee holds in both precisions the library runs in (bf16: autocast of the body).
PRECISIONS = pytest.mark.parametrize("precision", ["fp32", "bf16"])
# The model's own draws, a subpixel at a time: what the pass-counting tests below pin (the defaults draw a pixel's
# channels in sequence from a nucleus).
MODEL_DRAWS = dict(channels="joint", top_p=1.0)


class Recorder:
    """Captures the (image, mask) the network body sees on every forward pass, via a forward hook."""

    def __init__(self, model):
        self.inputs = []
        self.handle = model.input.register_forward_hook(
            lambda mod, args, out: self.inputs.append((args[0].clone(), args[1].clone())))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def model():
    # One thread: a tiny model gains nothing from two, and the shared 2-core machine punishes spinning ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tiny_model(8)
    torch.set_num_threads(threads)


def ragged_batch(batch=4, size=8):
    """Random per-subpixel masks (holes of different sizes, partly hidden pixels) plus one empty hole."""
    x, observed, tokens, lengths = random_batch(batch, size)
    observed[-1] = True
    return x, observed, tokens, lengths


@PRECISIONS
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_observed_subpixels_never_change_and_hole_is_filled(model, strategy, precision):
    x, observed, tokens, lengths = ragged_batch()
    images, chain = onade.inpaint(model, x, observed, tokens, lengths, strategy=strategy, record_every=1,
                                  precision=precision, **fast(strategy))
    assert images.dtype == torch.uint8 and images.shape == x.shape
    assert torch.equal(images[observed], x[observed])
    # Every frame of the chain keeps the observed subpixels too, and the last frame is the result.
    assert torch.equal(chain[:, observed], x[observed].expand(chain.shape[0], -1))
    assert torch.equal(chain[-1], images)
    # The hole holds samples, not the grey placeholder of unknown subpixels (with 2 of 256 levels
    # allowed to coincide by chance).
    assert (images[~observed] == 127).float().mean() < 0.05


@PRECISIONS
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hidden_true_values_never_reach_the_result(model, strategy, precision):
    x, observed, tokens, lengths = ragged_batch()
    other = torch.where(observed, x, 255 - x)
    kw = dict(strategy=strategy, seed=3, precision=precision, **fast(strategy))
    a, _ = onade.inpaint(model, x, observed, tokens, lengths, **kw)
    b, _ = onade.inpaint(model, other, observed, tokens, lengths, **kw)
    assert torch.equal(a, b)


@PRECISIONS
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_same_seed_same_result_other_seed_other_result(model, strategy, precision):
    x, observed, tokens, lengths = ragged_batch()
    kw = dict(strategy=strategy, precision=precision, **fast(strategy))
    a, ca = onade.inpaint(model, x, observed, tokens, lengths, seed=7, record_every=2, **kw)
    b, cb = onade.inpaint(model, x, observed, tokens, lengths, seed=7, record_every=2, **kw)
    c, _ = onade.inpaint(model, x, observed, tokens, lengths, seed=8, **kw)
    assert torch.equal(a, b) and torch.equal(ca, cb)
    assert not torch.equal(a, c)


def test_schedule_formula_at_every_step():
    for N, pmin, pmax, alpha in [(768, 0.1, 0.9, 0.7), (10, 0.05, 0.5, 0.3), (1, 0.2, 0.2, 1.0)]:
        for n in range(N):
            expected = max(pmin, pmax - (pmax - pmin) * n / (alpha * N))
            assert gibbs_schedule(n, N, pmin, pmax, alpha) == pytest.approx(expected, abs=1e-12)
    assert gibbs_schedule(0, 100) == pytest.approx(0.9)
    assert gibbs_schedule(35, 100) == pytest.approx(0.5)  # halfway down the ramp of alpha * N = 70 steps
    assert gibbs_schedule(70, 100) == pytest.approx(0.1) and gibbs_schedule(99, 100) == pytest.approx(0.1)


def test_independent_gibbs_resamples_the_scheduled_fraction_at_every_step(model):
    """The fraction of the hole hidden from the network at Gibbs step n is p_n (not 1 - p_n)."""
    x, _, tokens, lengths = random_batch(8, 8)
    observed = torch.zeros_like(x, dtype=torch.bool)  # the whole image is the hole: 8 * 192 Bernoullis a step
    N, pmin, pmax, alpha = 12, 0.15, 0.85, 0.5
    with Recorder(model) as rec:
        onade.inpaint(model, x, observed, tokens, lengths, strategy="independent-gibbs", steps=N, pmin=pmin, pmax=pmax,
                      alpha=alpha)
    assert len(rec.inputs) == N + 1  # the one-shot initial fill, then one pass per step
    assert not rec.inputs[0][1].any()
    for n, (_, seen) in enumerate(rec.inputs[1:]):
        p = gibbs_schedule(n, N, pmin, pmax, alpha)
        frac_hidden = (~seen).float().mean().item()
        sigma = math.sqrt(p * (1 - p) / seen.numel())
        assert abs(frac_hidden - p) < 5 * sigma + 1e-3, (n, frac_hidden, p)


def test_ancestral_gibbs_resamples_blocks_one_subpixel_per_pass(model):
    x, _, tokens, lengths = random_batch(2, 8)
    observed = observed_except_center(2, 8)  # 4x4x3 = 48 hole subpixels
    with Recorder(model) as rec:
        onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral-gibbs", steps=3, chunk=1)
    hidden_per_pass = [(~m).flatten(1).sum(1) for _, m in rec.inputs[1:]]
    # Within a block each pass shows exactly one more subpixel per example (an example whose block is
    # done waits at 0); anything else is the start of a fresh block, and there is one block per step.
    block_starts = [0]
    for i, (a, b) in enumerate(zip(hidden_per_pass, hidden_per_pass[1:])):
        if not torch.equal(b, (a - 1).clamp(min=0)):
            block_starts.append(i + 1)
            assert bool((a <= 1).all()) and bool((b >= 1).any())
    assert len(block_starts) == 3
    # A block of m subpixels takes m passes (the largest block of the batch sets the pace).
    assert len(hidden_per_pass) == sum(int(hidden_per_pass[i].max()) for i in block_starts)


@pytest.mark.parametrize("chunk", [1, 5])
def test_ancestral_makes_one_forward_per_chunk_of_subpixels(model, chunk):
    x, _, tokens, lengths = random_batch(3, 8)
    observed = observed_except_box(3, 8, 1, 2, 4, 3)  # 36 hole subpixels in every example
    calls = []
    handle = model.stem.register_forward_hook(lambda *a: calls.append(1))
    try:
        with Recorder(model) as rec:
            images, _ = onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral", steps=0, chunk=chunk,
                                          **MODEL_DRAWS)
    finally:
        handle.remove()
    assert len(calls) == math.ceil(36 / chunk)
    # Pass i conditions on the observed pixels plus exactly the i * chunk subpixels sampled before it.
    for i, (seen_x, seen) in enumerate(rec.inputs):
        assert torch.equal(seen.flatten(1).sum(1), torch.full((3,), 8 * 8 * 3 - 36 + min(36, i * chunk)))
        assert torch.equal(seen_x[seen], images[seen])


@pytest.mark.parametrize("strategy", ["greedy", "antigreedy"])
def test_confidence_fills_the_lowest_or_highest_entropy_subpixel_first(model, strategy):
    x, _, tokens, lengths = random_batch(2, 8)
    observed = observed_except_center(2, 8)
    with Recorder(model) as rec:
        onade.inpaint(model, x, observed, tokens, lengths, strategy=strategy, steps=0, chunk=1, top_p=1.0)
    assert len(rec.inputs) == 48
    with torch.inference_mode():
        for (seen_x, seen), (_, next_seen) in list(zip(rec.inputs, rec.inputs[1:]))[:6]:
            logp = torch.log_softmax(model(seen_x, seen, tokens, lengths), dim=-1)
            entropy = -(logp.exp() * logp).sum(-1).masked_fill(seen, math.nan).flatten(1)
            filled = (next_seen & ~seen).flatten(1)
            assert torch.equal(filled.sum(1), torch.ones(2, dtype=torch.long))
            best = entropy.nan_to_num(math.inf).argmin(1) if strategy == "greedy" else \
                entropy.nan_to_num(-math.inf).argmax(1)
            assert torch.equal(filled.float().argmax(1), best)


def test_chain_records_every_kth_state(model):
    x, _, tokens, lengths = random_batch(2, 8)
    observed = observed_except_center(2, 8)
    images, chain = onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral", steps=0, chunk=4,
                                  record_every=3, **MODEL_DRAWS)
    # 12 passes: frames before pass 1 and after passes 3, 6, 9, 12 (the last is also the result).
    assert chain.shape == (5, 2, 8, 8, 3) and chain.device.type == "cpu"
    assert (chain[0][~observed] == 127).all()
    assert torch.equal(chain[-1], images)
    _, none = onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral", steps=0, chunk=4)
    assert none.shape == (0, 2, 8, 8, 3)


def test_on_frame_sees_each_frame_as_it_is_recorded_and_can_stop_the_run(model):
    x, _, tokens, lengths = random_batch(2, 8)
    observed = observed_except_center(2, 8)
    seen = []
    kw = dict(strategy="ancestral", steps=0, chunk=4, record_every=3, **MODEL_DRAWS)
    images, chain = onade.inpaint(model, x, observed, tokens, lengths, **kw)
    streamed, empty = onade.inpaint(model, x, observed, tokens, lengths, on_frame=seen.append, **kw)
    assert torch.equal(images, streamed) and empty.shape[0] == 0  # the frames went to on_frame, not the chain
    assert len(seen) == len(chain) == 5 and all(torch.equal(a, b) for a, b in zip(seen, chain))

    class Stop(Exception):
        pass

    def stop_at_the_second(frame):
        seen.append(frame)
        if len(seen) == 2:
            raise Stop

    seen = []
    with pytest.raises(Stop):
        onade.inpaint(model, x, observed, tokens, lengths, on_frame=stop_at_the_second, **kw)
    assert len(seen) == 2


def test_uniform_init_and_annealing_run_and_keep_observed(model):
    x, observed, tokens, lengths = ragged_batch()
    images, _ = onade.inpaint(model, x, observed, tokens, lengths, strategy="independent-gibbs", steps=4,
                              init="uniform", temperature=1.5, final_temperature=0.01)
    assert torch.equal(images[observed], x[observed])
    assert temperature_schedule(0, 10, 1.5, 0.01) == pytest.approx(1.5)
    assert temperature_schedule(9, 10, 1.5, 0.01) == pytest.approx(0.01)
    assert temperature_schedule(5, 10, 1.5, 0.0) == 1.5


def test_draw_matches_the_softmax_and_temperature_zero_is_argmax():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.2, 0.0, 0.3, 0.5])
    logits = probs.log().expand(100_000, 4).contiguous()
    freq = torch.bincount(_draw(logits, torch.rand(100_000, generator=g)), minlength=4).float() / 100_000
    assert torch.allclose(freq, probs, atol=0.01) and freq[1] == 0
    u = torch.rand(100_000, generator=g)
    sharp = _draw(logits, u, temperature=0.5)
    expected = probs ** 2 / (probs ** 2).sum()
    assert torch.allclose(torch.bincount(sharp, minlength=4).float() / 100_000, expected, atol=0.01)
    assert (_draw(logits, u, temperature=0.0) == 3).all()
    # Per-row temperatures (host reciprocals) draw exactly what the scalar path draws at the same temperature.
    inv = torch.tensor([1 / 0.5], dtype=torch.float64).float().expand(100_000)
    assert torch.equal(_draw(logits, u, inv_temperature_N=inv), sharp)


def test_bad_arguments_raise_clear_errors(model):
    x, observed, tokens, lengths = random_batch(2, 8)
    with pytest.raises(ValueError, match="strategy"):
        onade.inpaint(model, x, observed, tokens, lengths, strategy="gibbs")
    with pytest.raises(ValueError, match="observed must be bool"):
        onade.inpaint(model, x, observed.to(torch.uint8), tokens, lengths)
    with pytest.raises(ValueError, match="uint8"):
        onade.inpaint(model, x.float(), observed, tokens, lengths)
    with pytest.raises(ValueError, match="pmin"):
        onade.inpaint(model, x, observed, tokens, lengths, pmin=0.9, pmax=0.1)
    with pytest.raises(ValueError, match="chunk"):
        onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral", steps=0, chunk=0)


def test_nothing_hidden_returns_the_input(model):
    x, _, tokens, lengths = random_batch(2, 8)
    images, chain = onade.inpaint(model, x, torch.ones_like(x, dtype=torch.bool), tokens, lengths, record_every=1)
    assert torch.equal(images, x) and chain.shape[0] == 1


def _passes(model, fn):
    with Recorder(model) as rec:
        out = fn()
    return rec.inputs, out


def test_sample_config_is_honoured_and_keywords_override_it(model):
    """Every field of the config reaches the sampler (strategy and temperature once fell back to defaults)."""
    x, _, tokens, lengths = random_batch(2, 8)
    observed = observed_except_center(2, 8)
    cfg = onade.SampleConfig(strategy="ancestral", steps=1, temperature=0.0, channels="joint")
    seen, (a, _) = _passes(model, lambda: onade.inpaint(model, x, observed, tokens, lengths, config=cfg, seed=1))
    assert len(seen) == 1  # ancestral with a budget of one pass, not 48 Gibbs sweeps
    b, _ = onade.inpaint(model, x, observed, tokens, lengths, config=cfg, seed=2)
    assert torch.equal(a, b)  # temperature 0 in one pass: the one-shot mode, whatever the seed
    seen, _ = _passes(model, lambda: onade.inpaint(model, x, observed, tokens, lengths, config=cfg, steps=5))
    assert len(seen) == 5 and cfg.steps == 1  # the keyword overrides for this call only
    with pytest.raises(ValueError, match="unknown inpainting setting"):
        onade.inpaint(model, x, observed, tokens, lengths, config=cfg, temprature=0.5)
    with pytest.raises(ValueError, match="guidance"):
        onade.inpaint(model, x, observed, tokens, lengths, guidance=-1.0)


@pytest.mark.parametrize("strategy", ["ancestral", "maskgit", "greedy"])
def test_budgeted_strategies_make_exactly_steps_passes(model, strategy):
    x, _, tokens, lengths = random_batch(3, 8)
    observed = observed_except_box(3, 8, 1, 2, 4, 3)  # 36 hole subpixels
    stats = {}
    seen, (images, _) = _passes(model, lambda: onade.inpaint(model, x, observed, tokens, lengths, strategy=strategy,
                                                             steps=7, stats=stats, **MODEL_DRAWS))
    assert len(seen) == 7 == stats["forward_passes"]
    assert torch.equal(images[observed], x[observed])
    revealed = [int(s.flatten(1).sum(1)[0]) - (192 - 36) for _, s in seen] + [36]
    sizes = [b - a for a, b in zip(revealed, revealed[1:])]
    assert sum(sizes) == 36 and min(sizes) >= 1
    if strategy != "ancestral":
        assert sizes == list(np.diff(cosine_plan(36, 7)))  # MaskGIT's cosine schedule


def test_ancestral_follows_the_profile_plan(model):
    x, _, tokens, lengths = random_batch(2, 8)
    observed = observed_except_center(2, 8)
    profile = LossProfile(bits=list(8 * np.exp(-np.arange(48) / 6.0) + 1))
    seen, _ = _passes(model, lambda: onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral", steps=5,
                                                   profile=profile, **MODEL_DRAWS))
    revealed = [int(s.flatten(1).sum(1)[0]) - (192 - 48) for _, s in seen]
    assert revealed == step_plan(profile, 5)[:-1]
    assert revealed != uniform_plan(48, 5)[:-1]  # a profile that falls fast front-loads small passes
    seen, _ = _passes(model, lambda: onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral", steps=5,
                                                   **MODEL_DRAWS))
    assert [int(s.flatten(1).sum(1)[0]) - (192 - 48) for _, s in seen] == uniform_plan(48, 5)[:-1]


def test_maskgit_keeps_the_most_confident_samples(model):
    """Without noise and at temperature 0, the first pass keeps the subpixels whose mode is most likely."""
    x, _, tokens, lengths = random_batch(2, 8)
    observed = observed_except_center(2, 8)
    seen, _ = _passes(model, lambda: onade.inpaint(model, x, observed, tokens, lengths, strategy="maskgit", steps=4,
                                                   temperature=0.0, confidence_noise=0.0))
    with torch.inference_mode():
        confidence = torch.log_softmax(model(x, observed, tokens, lengths), -1).amax(-1)
        best = confidence.masked_fill(observed, -math.inf).flatten(1)
    first = (seen[1][1] & ~observed).flatten(1)
    n = int(first[0].sum())
    assert n == cosine_plan(48, 4)[1]
    for b in range(2):
        assert set(first[b].nonzero().flatten().tolist()) == set(best[b].topk(n).indices.tolist())


@pytest.mark.parametrize("strategy", ["independent-gibbs", "ancestral", "maskgit"])
def test_guidance_one_is_the_unguided_sampler(model, strategy):
    x, observed, tokens, lengths = ragged_batch()
    seen, (a, _) = _passes(model, lambda: onade.inpaint(model, x, observed, tokens, lengths, strategy=strategy, steps=4,
                                                        seed=5, guidance=1.0))
    b, _ = onade.inpaint(model, x, observed, tokens, lengths, strategy=strategy, steps=4, seed=5)
    assert torch.equal(a, b)
    assert all(s.shape[0] == x.shape[0] for s, _ in seen)  # no unconditional half was computed
    guided, _ = _passes(model, lambda: onade.inpaint(model, x, observed, tokens, lengths, strategy=strategy, steps=4,
                                                     seed=5, guidance=2.0))
    assert all(s.shape[0] == 2 * x.shape[0] for s, _ in guided)  # one batched forward for both halves


def test_guided_logits_extrapolate_from_the_unconditional(model):
    """One ancestral pass at temperature 0 fills the hole with the argmax of l_u + s (l_c - l_u)."""
    x, _, tokens, lengths = random_batch(2, 8)
    observed = observed_except_center(2, 8)
    with torch.inference_mode():
        cond = model(x, observed, tokens, lengths)
        uncond = model(x, observed, tokens, torch.zeros_like(lengths))
    for s in (0.0, 2.5):
        images, _ = onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral", steps=1, temperature=0.0,
                                  guidance=s, precision="fp32", **MODEL_DRAWS)
        expected = (uncond + s * (cond - uncond)).argmax(-1).to(torch.uint8)
        assert torch.equal(images[~observed], expected[~observed])


def test_set_ignores_padding_even_where_it_aliases_a_sampled_index():
    t = torch.zeros(2, 5, dtype=torch.uint8)
    sub = torch.tensor([[3, 3, 3], [1, 4, 4]])
    valid = torch.tensor([[True, False, False], [True, True, False]])
    _set(t, sub, valid, torch.tensor([[9, 1, 2], [7, 8, 6]], dtype=torch.uint8))
    assert t.tolist() == [[0, 0, 0, 9, 0], [0, 7, 0, 0, 8]]


def test_planned_passes_fill_every_hole_of_a_ragged_batch(model):
    """DP plans of different hole sizes end at different widths; every hole subpixel is still sampled (a padded
    entry once overwrote the last sample of the largest hole, leaving it grey)."""
    g = torch.Generator().manual_seed(0)
    x, _, tokens, lengths = random_batch(2, 8)
    observed = torch.ones_like(x, dtype=torch.bool)
    for b, size in enumerate((126, 123)):  # 8 DP passes whose last ones are 15 and 16 subpixels wide
        observed[b].view(-1)[torch.randperm(192, generator=g)[:size]] = False
    profile = LossProfile(bits=list(np.linspace(6, 2, 768)))
    assert step_plan(profile, 8, 126)[-2:] == [111, 126] and step_plan(profile, 8, 123)[-2:] == [107, 123]
    with Recorder(model) as rec:
        onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral", steps=8, profile=profile,
                      **MODEL_DRAWS)
    # Pass k shows exactly the plan's first t_k hole subpixels; after the last one every hole subpixel is known.
    shown = [(~observed).flatten(1).sum(1) - (~seen).flatten(1).sum(1) for _, seen in rec.inputs]
    assert [int(s[0]) for s in shown] == step_plan(profile, 8, 126)[:-1]
    assert [int(s[1]) for s in shown] == step_plan(profile, 8, 123)[:-1]
    filled = [onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral", steps=8, profile=profile,
                            seed=s, **MODEL_DRAWS)[0] for s in range(3)]
    assert all(torch.equal(f[observed], x[observed]) for f in filled)
    # A subpixel left unsampled shows the placeholder grey whatever the seed.
    assert not ((~observed) & (filled[0] == 127) & (filled[1] == 127) & (filled[2] == 127)).any()


def test_chunk_with_a_pass_budget_is_refused(model):
    x, observed, tokens, lengths = random_batch(2, 8)
    with pytest.raises(ValueError, match="steps 0"):
        onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral", steps=32, chunk=4)
    onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral-gibbs", steps=2, chunk=4)  # its blocks


# ---- per-example seeds: an example's sample does not depend on its batch ---------------------------------------

HOLES = (3, 40, 12, 0, 100, 25, 70, 7)  # hole subpixels of the pool's examples: 3 is fewer than fast()'s 6 passes
SEEDS = (11, 2**63 - 1, 33, 44, 55, 66, 77, 88)


def pool(size=8):
    """Examples with holes of different sizes (random subpixels: partly hidden pixels; one empty) and captions."""
    x, _, tokens, lengths = random_batch(len(HOLES), size, seed=1)
    g = torch.Generator().manual_seed(2)
    observed = torch.ones_like(x, dtype=torch.bool)
    for b, hole in enumerate(HOLES):
        observed[b].view(-1)[torch.randperm(size * size * 3, generator=g)[:hole]] = False
    return x, observed, tokens, lengths


@pytest.fixture(scope="module")
def peaked(model):
    """The tiny model with its head's logits scaled 5x: conditionals peaked like a trained model's (the fresh
    head's are near uniform, where maskgit's ranking is all noise and its annealing could not be seen)."""
    peaked = copy.deepcopy(model)
    with torch.no_grad():
        peaked.head_proj.weight.mul_(5.0)
        peaked.head_proj.bias.mul_(5.0)
    return peaked


def run(model, picks, **kw):
    """Inpaint the pool's examples `picks` as one batch, each with its own seed -> {example: image}."""
    x, observed, tokens, lengths = (t[list(picks)] for t in pool())
    images, _ = onade.inpaint(model, x, observed, tokens, lengths, seed=[SEEDS[i] for i in picks], **kw)
    assert torch.equal(images[observed], x[observed])
    return dict(zip(picks, images))


# Two batches of one size (the network's fp32 rounding may depend on the batch size, never on a row's
# neighbours) sharing examples 0 and 2 at other positions, beside holes that set other widths, pass counts
# and Gibbs sweeps: example 2's 12 subpixels are the largest hole of BATCH_A, BATCH_B's is 100.
BATCH_A, BATCH_B, SHARED = (0, 7, 2, 3), (4, 2, 6, 0), (0, 2)
# "own passes": steps 0 gives each example as many passes (Gibbs: sweeps) as it has hole subpixels, over which
# it anneals its temperature and (maskgit) its noise.
VARIANTS = {"plain": {}, "guided": dict(guidance=2.0), "annealed": dict(temperature=1.5, final_temperature=0.05),
            "own passes": dict(steps=0, final_temperature=0.2, init="uniform")}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_example_samples_the_same_whatever_its_neighbours(peaked, strategy, variant):
    kw = dict(strategy=strategy, precision="fp32", **{**fast(strategy), **VARIANTS[variant]})
    a, b = run(peaked, BATCH_A, **kw), run(peaked, BATCH_B, **kw)
    for i in SHARED:
        assert torch.equal(a[i], b[i]), i


def test_an_example_done_with_its_sweeps_is_no_longer_resampled(model):
    with Recorder(model) as rec:
        run(model, (0, 1, 2, 3), strategy="independent-gibbs", steps=0)
    hidden = [(~seen).flatten(1).sum(1).tolist() for _, seen in rec.inputs]
    # The initial fill, then one pass per sweep (a sweep that resamples nothing anywhere is skipped, so
    # example 2's 12 sweeps are among the first 13 passes): after them it is never hidden again, while
    # example 1 (40 subpixels) goes on.
    assert all(h[2] == 0 for h in hidden[13:]) and any(h[1] > 0 for h in hidden[13:])
    assert any(h[2] > 0 for h in hidden[1:13])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_an_example_samples_the_same_alone_as_in_a_batch(peaked, strategy):
    """Example 0 (3 subpixels) takes 3 passes: alone its batch takes 3, beside BATCH_B's larger holes 6: its
    annealing and maskgit's noise must follow its own passes. Across batch sizes the network itself must be
    batch-invariant: bf16 autocast measured so on CPU; in fp32 a batch of one rounds its convolutions
    differently, so without bf16 the small batch is a pair (with the empty hole: still 3 passes)."""
    precision = resolve_precision("auto", "cpu")
    small = (0,) if precision == "bf16" else (0, 3)
    kw = dict(strategy=strategy, precision=precision, **fast(strategy), final_temperature=0.05, guidance=2.0)
    a, b = run(peaked, small, **kw), run(peaked, BATCH_B, **kw)
    assert torch.equal(a[0], b[0])


def test_an_int_seed_is_deterministic_and_means_derived_per_example_seeds(model):
    x, observed, tokens, lengths = pool()
    kw = dict(strategy="ancestral", steps=6, precision="fp32")
    a, _ = onade.inpaint(model, x, observed, tokens, lengths, seed=7, **kw)
    b, _ = onade.inpaint(model, x, observed, tokens, lengths, seed=7, **kw)
    c, _ = onade.inpaint(model, x, observed, tokens, lengths, seed=example_seeds(7, len(HOLES)), **kw)
    d, _ = onade.inpaint(model, x, observed, tokens, lengths, seed=8, **kw)
    assert torch.equal(a, b) and torch.equal(a, c) and not torch.equal(a, d)
    seeds = example_seeds(7, 4)
    assert seeds == example_seeds(7, 9)[:4]  # example b's seed does not depend on the batch size
    assert len(set(seeds)) == 4 and all(0 <= s < 2**63 for s in seeds)
    assert example_seeds(np.int64(7), 2) == seeds[:2] and example_seeds(torch.tensor([1, 2]), 2) == [1, 2]


def test_bad_seeds_raise_clear_errors(model):
    x, observed, tokens, lengths = random_batch(2, 8)
    for seed, message in [([1, 2, 3], "3 values but the batch has 2"), ([1], "1 values"), (-1, r"\[0, 2\*\*63\)"),
                          ([0, 2**63], r"seed\[1\] must be an int in"), ([0, 1.5], r"seed\[1\]"), (True, "seed must"),
                          ("12", "seed must be an int or a sequence"), (None, "seed must be an int or a sequence")]:
        with pytest.raises(ValueError, match=message):
            onade.inpaint(model, x, observed, tokens, lengths, seed=seed, steps=2, **MODEL_DRAWS)


# Ops that only make a view (no kernel runs); whether indexing makes one can depend on a shape.
VIEWS = {"aten::as_strided", "aten::slice", "aten::alias", "aten::view", "aten::reshape", "aten::_reshape_alias",
         "aten::select", "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::transpose", "aten::permute",
         "aten::t", "aten::detach", "aten::unflatten", "aten::flatten", "aten::narrow", "aten::split", "aten::chunk",
         "aten::unbind", "aten::lift_fresh", "aten::expand_as", "aten::view_as", "aten::numpy_T", "aten::_unsafe_view"}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_run_launches_the_same_ops_whatever_the_batch_size_and_reads_the_caption_once(model, strategy):
    """No per-example kernel launches (on a GPU each costs ~10 us): the ops a run makes, counted by
    torch.profiler, are the same for 2 and for 8 examples with the same hole and seed (so the same pass count:
    ancestral-gibbs's depends on the drawn block sizes), none of them a random-number op (the numbers are
    counter-based), and the caption reader runs once per call, not once per pass."""
    from collections import Counter

    from torch.profiler import ProfilerActivity, profile

    ops, reads = {}, []
    handle = model.reader.register_forward_hook(lambda *_: reads.append(1))
    try:
        for batch in (2, 8):
            x, _, tokens, lengths = random_batch(batch, 8)
            reads.clear()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                stats = {}
                onade.inpaint(model, x, observed_except_center(batch, 8), tokens, lengths, seed=[1] * batch, stats=stats,
                              precision="fp32",
                              strategy=strategy, guidance=2.0, final_temperature=0.2, init="uniform", **fast(strategy))
            ops[batch] = Counter(e.name for e in prof.events() if e.name.startswith("aten::") and e.name not in VIEWS)
            assert len(reads) == 1 and stats["forward_passes"] > 2
    finally:
        handle.remove()
    assert ops[2] == ops[8]
    random_ops = {"aten::uniform_", "aten::random_", "aten::rand", "aten::randint", "aten::normal_",
                  "aten::multinomial", "aten::bernoulli_", "aten::exponential_"}
    assert not random_ops & set(ops[8])


def test_top_p_draws_from_the_nucleus_renormalised():
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.3, 0.05, 0.5, 0.15])
    logits = probs.log().expand(100_000, 4).contiguous()
    u = torch.rand(100_000, generator=g)
    # 0.5 and 0.3 hold 0.8 >= 0.7: the nucleus; 0.15 would start past it.
    freq = torch.bincount(_draw(logits, u, top_p=0.7), minlength=4).float() / 100_000
    assert torch.allclose(freq, torch.tensor([0.375, 0.0, 0.625, 0.0]), atol=0.01)
    assert torch.equal(_draw(logits, u, top_p=1.0), _draw(logits, u))
    assert (_draw(logits, u, top_p=0.01) == 2).all()  # the most likely value alone
    # Temperature first, then the nucleus of the sharpened distribution.
    sharp = probs ** 2 / (probs ** 2).sum()  # 0.5 alone holds 0.66 of it
    assert (_draw(logits, u, temperature=0.5, top_p=0.6) == 2).all() and sharp[2] > 0.6


def test_channels_in_sequence_draw_r_then_g_then_b_of_each_planned_pass(model):
    x, _, tokens, lengths = random_batch(2, 8)
    observed = observed_except_box(2, 8, 1, 2, 4, 3)  # 12 hole pixels
    observed[1, 2, 2, 1] = True  # a partly hidden pixel: its G is known
    cfg = onade.SampleConfig(strategy="ancestral", steps=9, channels="sequence")
    stats = {}
    with Recorder(model) as rec:
        images, _ = onade.inpaint(model, x, observed, tokens, lengths, cfg, stats=stats)
    assert stats["forward_passes"] == len(rec.inputs) == 9 == onade.sampling.planned_passes(cfg, 36)
    assert torch.equal(images[observed], x[observed])
    # Each planned pass reveals the pass's pixels channel by channel: R, then G, then B of the same pixels (a
    # channel already observed, like example 1's G at (2, 2), is skipped).
    seen = [s for _, s in rec.inputs] + [torch.ones_like(observed)]
    for k in range(3):
        new = [seen[3 * k + c + 1] & ~seen[3 * k + c] for c in range(3)]
        pixels = (new[0] | new[1] | new[2]).any(-1)
        for c in range(3):
            assert torch.equal(new[c][..., c], pixels & ~observed[..., c]), (k, c)
            assert not new[c][..., [i for i in range(3) if i != c]].any()
        assert pixels.flatten(1).sum(1).tolist() == [4, 4]
    # An example samples the same at another position of the batch (its own seed).
    swapped, _ = onade.inpaint(model, x.flip(0), observed.flip(0), tokens.flip(0), lengths.flip(0), cfg,
                               seed=example_seeds(0, 2)[::-1])
    assert torch.equal(swapped.flip(0), images)
    # The other strategies ignore it (it is the default): maskgit makes its 9 passes.
    stats = {}
    onade.inpaint(model, x, observed, tokens, lengths, strategy="maskgit", steps=9, channels="sequence", stats=stats)
    assert stats["forward_passes"] == 9
    # Fewer passes than a pixel takes draw the channels jointly, within the budget.
    for steps in (1, 2):
        stats = {}
        joint, _ = onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral", steps=steps,
                                 channels="joint", seed=3)
        got, _ = onade.inpaint(model, x, observed, tokens, lengths, strategy="ancestral", steps=steps,
                               channels="sequence", seed=3, stats=stats)
        assert torch.equal(got, joint) and stats["forward_passes"] == steps


def test_stats_measure_what_temperature_and_top_p_trade_without_changing_the_sample(peaked):
    from onade.sampling import _draw_weights, _kl_bits

    x, observed, tokens, lengths = random_batch(3, 8)
    plain, with_stats = {}, {}
    for top_p, temperature in ((1.0, 1.0), (0.6, 1.0), (1.0, 0.5), (0.6, 0.0)):
        kw = dict(strategy="ancestral", steps=8, top_p=top_p, temperature=temperature, precision="fp32", seed=3)
        stats = {}
        a, _ = onade.inpaint(peaked, x, observed, tokens, lengths, **kw)
        b, _ = onade.inpaint(peaked, x, observed, tokens, lengths, stats=stats, measure_kl=True, **kw)
        assert torch.equal(a, b)
        with_stats[(top_p, temperature)] = stats["draw_kl_bits"]
    assert with_stats[(1.0, 1.0)] == pytest.approx(0.0, abs=1e-6)
    assert 0 < with_stats[(0.6, 1.0)] <= math.log2(1 / 0.6) + 1e-6 and with_stats[(1.0, 0.5)] > 0
    assert with_stats[(0.6, 0.0)] > with_stats[(0.6, 1.0)]  # the most likely value alone is the farthest
    # A nucleus draw's KL from the model is -log2 of the mass it keeps.
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    assert float(_kl_bits(logits, _draw_weights(logits, top_p=0.7))) == pytest.approx(-math.log2(0.8), rel=1e-5)


def test_polish_sweeps_redraw_whole_pixels_of_the_filled_hole_given_the_rest(model):
    x, _, tokens, lengths = random_batch(2, 8)
    observed = observed_except_box(2, 8, 1, 1, 6, 6)  # 36 hole pixels
    cfg = onade.SampleConfig(strategy="ancestral", steps=6, channels="sequence", polish=3, pmin=0.2)
    stats = {}
    with Recorder(model) as rec:
        images, _ = onade.inpaint(model, x, observed, tokens, lengths, cfg, stats=stats)
    assert stats["forward_passes"] == len(rec.inputs) == 9 == onade.sampling.planned_passes(cfg, 108)
    assert torch.equal(images[observed], x[observed])
    for seen_x, seen in rec.inputs[6:]:
        hidden = ~seen
        # Whole pixels of the hole, and only those; everything else shows (the fill around them included).
        assert torch.equal(hidden.any(-1), hidden.all(-1)) and not (hidden & observed).any()
        assert 0 < int(hidden.all(-1).sum()) <= 2 * 36 and torch.equal(seen_x[seen & observed], x[seen & observed])
    swapped, _ = onade.inpaint(model, x.flip(0), observed.flip(0), tokens.flip(0), lengths.flip(0), cfg,
                               seed=example_seeds(0, 2)[::-1])
    assert torch.equal(swapped.flip(0), images)
    with pytest.raises(ValueError, match="polish sweeps follow the ancestral"):
        onade.inpaint(model, x, observed, tokens, lengths, strategy="maskgit", polish=2)
