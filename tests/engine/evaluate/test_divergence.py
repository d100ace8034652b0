"""KL on the baseline's top-k support, top-1 agreement and perplexity, against hand-computed values."""

import math

import pytest
import torch

from qrecipe.engine.evaluate.divergence import bucket_kl, compare_pass, reference_pass, topk_logprobs
from qrecipe.engine.evaluate.perplexity import perplexity


def _logp(*probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def test_full_support_kl_matches_hand_computation():
    # p = (.5, .3, .2), q = (.4, .4, .2): KL = .5 ln(.5/.4) + .3 ln(.3/.4)
    kl = bucket_kl(_logp(0.5, 0.3, 0.2), _logp(0.4, 0.4, 0.2)).item()
    assert kl == pytest.approx(0.5 * math.log(0.5 / 0.4) + 0.3 * math.log(0.3 / 0.4), abs=1e-12)


def test_top1_support_merges_the_rest_into_one_bucket():
    # k = 1: outcomes {token 0, rest}: p = (.5, .5), q = (.4, .6)
    kl = bucket_kl(_logp(0.5), _logp(0.4)).item()
    assert kl == pytest.approx(0.5 * math.log(0.5 / 0.4) + 0.5 * math.log(0.5 / 0.6), abs=1e-12)


def test_identical_distributions_have_zero_kl_at_any_k():
    logits = torch.randn(5, 7, 50, generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(logits, -1)
    for k in (1, 8, 50):
        values, ids = topk_logprobs(logits, k)
        assert bucket_kl(values, logp.gather(-1, ids.long())).abs().max().item() < 1e-12


def test_rounding_noise_in_the_tail_is_not_divergence():
    # the variant's top-k covers all its mass but for float noise; the baseline's tail is real
    kl = bucket_kl(_logp(0.5, 0.49), _logp(0.5, 0.5 - 1e-9)).item()
    expected = 0.01 * math.log(0.01 / 1e-5) + 0.49 * math.log(0.49 / (0.5 - 1e-9))  # variant tail floored at 1e-5
    assert math.isfinite(kl) and kl == pytest.approx(expected)


def test_bucket_kl_is_a_lower_bound_that_reaches_the_full_kl():
    g = torch.Generator().manual_seed(1)
    p = torch.log_softmax(torch.randn(64, 40, generator=g) * 2, -1)
    q = torch.log_softmax(torch.randn(64, 40, generator=g) * 2, -1)
    full = (p.double().exp() * (p.double() - q.double())).sum(-1)
    previous = torch.zeros(64, dtype=torch.float64)
    for k in (1, 4, 16, 40):
        values, ids = topk_logprobs(p, k)
        kl = bucket_kl(values, q.gather(-1, ids.long()))
        assert (kl <= full + 1e-5).all()  # float32 log-probs: agreement to ~1e-6
        assert (kl >= previous - 1e-5).all()  # more support, never less KL
        previous = kl
    assert torch.allclose(previous, full, atol=1e-5)


def test_topk_logprobs_are_sorted_and_clipped_to_the_vocabulary():
    logits = torch.tensor([[0.0, 3.0, 1.0]])
    values, ids = topk_logprobs(logits, 10)
    assert ids.tolist() == [[1, 2, 0]]
    assert values.exp().sum().item() == pytest.approx(1.0)


def test_a_model_against_its_own_reference(tiny_model, shared):
    model, tokenizer = tiny_model
    g = torch.Generator().manual_seed(0)
    windows = torch.randint(0, tokenizer.vocab_size, (3, 48), generator=g)
    ref = reference_pass(model, windows, batch_size=2, k=16, progress=False)
    q = compare_pass(model, windows, ref, batch_size=2, progress=False)
    assert q.kl_mean == pytest.approx(0.0, abs=1e-9) and q.kl_p99 == pytest.approx(0.0, abs=1e-9)
    assert q.top1_agreement == 1.0
    assert q.ppl == pytest.approx(ref.ppl) == pytest.approx(perplexity(model, windows, 2, progress=False).ppl)
    assert q.tokens == ref.tokens == 3 * 47
    assert ref.topk_ids.shape == (3, 47, 16) and ref.topk_logp.dtype == torch.float32


def test_a_perturbed_model_diverges(fresh_tiny_model):
    model, tokenizer = fresh_tiny_model
    windows = torch.randint(0, tokenizer.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    ref = reference_pass(model, windows, batch_size=2, k=8, progress=False)
    with torch.no_grad():
        for p in model.model.layers[0].mlp.parameters():
            p.add_(torch.randn_like(p) * p.std())
    q = compare_pass(model, windows, ref, batch_size=2, progress=False)
    assert q.kl_mean > 1e-4 and q.kl_p99 >= q.kl_mean
    assert 0.0 <= q.top1_agreement < 1.0
