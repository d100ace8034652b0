"""The GPTQ solver on synthetic weights with correlated inputs: error, grid, order."""

from __future__ import annotations

import pytest
import torch

from qrecipe.engine.quant.gptq import SingularHessian, gptq_quantize
from qrecipe.engine.quant.grid import WeightGrid
from qrecipe.engine.schemes import SCHEMES
from qrecipe.kernels import QuantParams


def _problem(n=48, k=128, tokens=2048, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5
    x = torch.randn(tokens, k, generator=g) @ mix * torch.linspace(0.2, 3.0, k)  # correlated, uneven channels
    return torch.randn(n, k, generator=g) * 0.05, x, x.T @ x / tokens


def _grid(scheme: str, group_size, symmetric: bool) -> WeightGrid:
    return WeightGrid.of(SCHEMES[scheme], QuantParams(group_size, symmetric=symmetric))


def _output_error(w, w_hat, x):
    return ((x @ (w - w_hat).T) ** 2).mean().item()


@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_lowers_output_error_and_stays_on_grid(group_size, act_order):
    w, x, h = _problem()
    grid = _grid("W4A16", group_size, True)
    rtn = grid.fake(w, *grid.qparams(w))
    w_q, scale, zero = gptq_quantize(w, h, grid, act_order=act_order)
    assert _output_error(w, w_q, x) < 0.85 * _output_error(w, rtn, x)
    # The result is exactly representable with natural-order group scales: the packed
    # format (no per-column group index) reproduces it bit for bit.
    assert scale.shape == (w.shape[0], 1 if group_size is None else w.shape[1] // group_size)
    assert torch.equal(grid.fake(w_q, scale, zero), w_q)
    assert torch.isfinite(scale).all() and (scale > 0).all()


def test_gptq_is_deterministic():
    w, _, h = _problem()
    grid = _grid("W4A16", 32, False)
    a = gptq_quantize(w, h, grid, act_order=True)
    b = gptq_quantize(w, h, grid, act_order=True)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_dead_inputs_get_zero_weights():
    w, _, h = _problem()
    h[5, :] = h[:, 5] = 0  # input 5 never fired
    w_q, _, _ = gptq_quantize(w, h, _grid("W8A8", None, True))
    assert torch.all(w_q[:, 5] == 0)


def test_rank_deficient_hessian_without_dampening_is_singular():
    w, x, _ = _problem(tokens=16)  # 16 tokens cannot span 128 input channels
    with pytest.raises(SingularHessian):
        gptq_quantize(w, x.T @ x / 16, _grid("W4A16", None, True), damp=0.0)


@pytest.mark.parametrize("act_order", [False, True])
def test_static_groups_take_their_scales_from_the_weights_as_given(act_order):
    """static_groups: every group's scale and zero are the round-to-nearest ones of the original
    weights (llm-compressor's GPTQ), and GPTQ still lowers the output error below RTN's."""
    w, x, h = _problem()
    grid = _grid("W4A16", 32, False)
    w_q, scale, zero = gptq_quantize(w, h, grid, act_order=act_order, static_groups=True)
    rtn_scale, rtn_zero = grid.qparams(w)
    assert torch.equal(scale, rtn_scale) and torch.equal(zero, rtn_zero)
    assert torch.equal(grid.fake(w_q, scale, zero), w_q)
    assert _output_error(w, w_q, x) < 0.85 * _output_error(w, grid.fake(w, rtn_scale, rtn_zero), x)


def test_sub_blocks_and_lazy_groups_agree_with_single_column_updates():
    """The two-level lazy updates are the reference's column-by-column updates reordered: with
    one sub-block per block (SUB_BLOCK = block_size) the codes are the same up to float rounding."""
    import qrecipe.engine.quant.gptq as solver

    w, _, h = _problem(n=64, k=256)
    grid = _grid("W4A16", 64, False)
    fast = gptq_quantize(w, h, grid, act_order=True, block_size=128)
    saved = solver.SUB_BLOCK
    solver.SUB_BLOCK = 128
    try:
        reference = gptq_quantize(w, h, grid, act_order=True, block_size=128)
    finally:
        solver.SUB_BLOCK = saved
    assert (fast[0] != reference[0]).float().mean().item() < 1e-3
    assert torch.equal(fast[1], reference[1]) and torch.equal(fast[2], reference[2])
