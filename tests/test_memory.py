"""onade.memory: the per-row activation estimate bounds what a forward really allocates, and a batch run in
pieces (capped, or split on an out-of-memory error injected into the network) gives the same bytes."""

import dataclasses

import pytest
import torch

import onade
from onade.config import SampleConfig, get_preset
from onade.masks import observed_except_center
from onade.memory import (OutOfMemoryAtOneExample, forward_batch_limit, forward_bytes_per_row, inpaint_in_pieces,
                          is_out_of_memory)
from onade.sampling import example_seeds
from tests.helpers import random_batch, tiny_model

pytestmark = pytest.mark.timeout(120)


def cpu_peak_bytes(model, batch: int) -> int:
    """torch.profiler's peak of CPU allocations during a forward whose head scores every pixel."""
    from torch.profiler import ProfilerActivity, profile

    S = model.cfg.image_size
    x, _, tokens, lengths = random_batch(batch, S, seq=16, vocab=model.cfg.vocab_size)
    with torch.inference_mode(), onade.precision.autocast("fp32"):
        caption = model.read_caption(tokens, lengths)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            feats = model.features(x, observed_except_center(batch, S), caption)
            logits = model.head(feats.reshape(batch, -1, feats.shape[-1])).float()
            cdf = torch.softmax(logits, -1).cumsum_(-1)
            del feats, logits, cdf
    running = peak = 0
    for event in sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start):
        running += event.self_cpu_memory_usage
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("preset,head", [("debug", "softmax"), ("small", "softmax"), ("small", "logistic")])
def test_the_estimate_bounds_a_forwards_real_allocations_without_wasting_much(preset, head):
    torch.manual_seed(0)
    cfg = get_preset(preset).model
    model = onade.build_model(dataclasses.replace(cfg, head=head)).eval()
    per_row = (cpu_peak_bytes(model, 4) - cpu_peak_bytes(model, 2)) / 2
    estimate = forward_bytes_per_row(model.cfg, max_tokens=16)
    assert per_row <= estimate <= 2.5 * per_row, (per_row, estimate)


def test_the_limit_spends_half_the_free_memory():
    cfg = get_preset("base").model
    per_row = forward_bytes_per_row(cfg)
    assert forward_batch_limit(cfg, "cpu", free=100 * per_row) == 50
    assert forward_batch_limit(cfg, "cpu", free=per_row) == 1  # never below one row
    assert forward_batch_limit(cfg, "cpu") >= 1  # from /proc/meminfo here


class InjectedOOM:
    """Raises torch.OutOfMemoryError, as CUDA's allocator does, from the network's first layer whenever a
    forward pass has more than `rows` rows."""

    def __init__(self, model, rows: int):
        self.rows, self.raised = rows, 0
        self.handle = model.stem.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        if args[0].shape[0] > self.rows:
            self.raised += 1
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate for {args[0].shape[0]} rows")


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_a_split_run_gives_the_same_bytes_as_an_unsplit_one(guidance):
    model = tiny_model(8)
    x, _, tokens, lengths = random_batch(7, 8)
    observed = observed_except_center(7, 8)
    observed[0] = True  # one example with nothing to fill: a piece of its own finishes at once
    seeds = example_seeds(3, 7)
    cfg = SampleConfig(strategy="ancestral", steps=5, guidance=guidance, precision="bf16")
    whole = inpaint_in_pieces(model, x, observed, tokens, lengths, cfg, seeds=seeds, max_rows=None, record_every=1)
    rows = 3 * (1 + (guidance != 1))
    capped = inpaint_in_pieces(model, x, observed, tokens, lengths, cfg, seeds=seeds, max_rows=rows, record_every=1)
    oom = InjectedOOM(model, rows=2 * (1 + (guidance != 1)))
    split = inpaint_in_pieces(model, x, observed, tokens, lengths, cfg, seeds=seeds, max_rows=None, record_every=1)
    oom.handle.remove()
    direct, _ = onade.inpaint(model, x, observed, tokens, lengths, cfg, seed=seeds)
    for run in (capped, split):
        assert torch.equal(run.images_BHWC, whole.images_BHWC)
        assert torch.equal(run.chain_FBHWC, whole.chain_FBHWC)
    assert torch.equal(whole.images_BHWC, direct)
    # 7 examples -> 4 -> 2 per piece: two out-of-memory errors recovered, and the size that fitted reported.
    assert (split.splits, oom.raised) == (2, 2) and split.rows_per_pass == oom.rows
    assert whole.splits == capped.splits == 0 and capped.forward_passes > whole.forward_passes


def test_out_of_memory_at_one_example_is_a_clear_error_and_other_errors_pass_through():
    model = tiny_model(8)
    x, _, tokens, lengths = random_batch(2, 8)
    cfg = SampleConfig(steps=3)
    oom = InjectedOOM(model, rows=0)
    with pytest.raises(OutOfMemoryAtOneExample, match="one example .* per forward pass: CUDA out of memory"):
        inpaint_in_pieces(model, x, observed_except_center(2, 8), tokens, lengths, cfg, seeds=[1, 2], max_rows=None)
    oom.handle.remove()
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    with pytest.raises(ValueError, match="one seed per example"):
        inpaint_in_pieces(model, x, observed_except_center(2, 8), tokens, lengths, cfg, seeds=[1], max_rows=None)
