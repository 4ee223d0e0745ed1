"""onade.precision: what "auto" resolves to, and that bf16 autocast runs the body in bf16 while the logits
the losses and samplers see stay fp32."""

import pytest
import torch

from onade.loss import nade_loss
from onade.masks import observed_except_center
from onade.precision import autocast, cpu_has_fast_bf16, resolve_precision
from tests.helpers import random_batch, tiny_model


def test_auto_follows_the_cpu_capability_and_explicit_choices_are_kept():
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", "cpu")


def test_bf16_runs_the_body_in_bf16_and_returns_fp32_logits():
    model = tiny_model(8)
    x, _, tokens, lengths = random_batch(4, 8)
    observed = observed_except_center(4, 8)
    seen = []
    model.stem.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    with torch.no_grad():
        ref = model(x, observed, tokens, lengths)
        with autocast("bf16", "cpu"):
            low = model(x, observed, tokens, lengths)
    assert seen == [torch.float32, torch.bfloat16]
    assert low.dtype == torch.float32 and ref.dtype == torch.float32
    assert not torch.equal(low, ref)
    # bf16 keeps ~3 significant digits: the loss moves by far less than a hundredth of a bit.
    assert float(nade_loss(low, x, observed)) == pytest.approx(float(nade_loss(ref, x, observed)), abs=0.02)


def test_fp32_context_changes_nothing():
    model = tiny_model(8)
    x, observed, tokens, lengths = random_batch(2, 8)
    with torch.no_grad():
        ref = model(x, observed, tokens, lengths)
        with autocast("fp32", "cpu"):
            same = model(x, observed, tokens, lengths)
    assert torch.equal(ref, same)


def test_auto_picks_bf16_only_on_gpus_that_compute_it_natively():
    """torch.cuda.is_bf16_supported() also says yes for pre-Ampere GPUs, which emulate bf16 slower than fp32."""
    from onade.precision import cuda_has_native_bf16

    assert not cuda_has_native_bf16((7, 0)) and not cuda_has_native_bf16((7, 5))  # V100, T4
    assert cuda_has_native_bf16((8, 0)) and cuda_has_native_bf16((8, 6)) and cuda_has_native_bf16((9, 0))
    assert cuda_has_native_bf16((0, 0), hip=True)
