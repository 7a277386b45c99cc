"""multihead.apply_rotary against the formulas PyTorch users run: Llama's rotate_half
(the half-split "NeoX" layout) and GPT-J's interleaved pairs, written in torch in
float64, including partial rotary (rotary_dim < D) and positions past 100k."""

import numpy as np
import pytest

import multihead


def torch_rotary(x, positions, rotary_dim, base, interleaved):
    torch = pytest.importorskip("torch")
    x = torch.tensor(x, dtype=torch.float64)  # (B, L, H, D)
    pos = torch.tensor(np.broadcast_to(positions, x.shape[:2]).copy(), dtype=torch.float64)  # (B, L)
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))
    freqs = pos[..., None] * inv_freq  # (B, L, rotary_dim / 2)
    rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if not interleaved:
        # transformers' Llama: emb = cat(freqs, freqs); q * cos + rotate_half(q) * sin
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
        cos, sin = emb.cos(), emb.sin()

        def rotate_half(t):
            t1, t2 = t[..., : t.shape[-1] // 2], t[..., t.shape[-1] // 2 :]
            return torch.cat((-t2, t1), dim=-1)

        out = rot * cos + rotate_half(rot) * sin
    else:
        # GPT-J: sin/cos repeated per pair; rotate_every_two
        sin = torch.repeat_interleave(freqs.sin(), 2, dim=-1)[:, :, None, :]
        cos = torch.repeat_interleave(freqs.cos(), 2, dim=-1)[:, :, None, :]

        def rotate_every_two(t):
            t1, t2 = t[..., ::2], t[..., 1::2]
            return torch.stack((-t2, t1), dim=-1).flatten(-2)

        out = rot * cos + rotate_every_two(rot) * sin
    return torch.cat((out, rest), dim=-1).numpy()


def check(x, positions, rotary_dim, base, interleaved):
    got = multihead.apply_rotary(x, positions, rotary_dim=rotary_dim, base=base, interleaved=interleaved)
    want = torch_rotary(x, positions, rotary_dim, base, interleaved)
    assert got.dtype == np.float32 and got.shape == x.shape
    # f32 cos/sin (half an ulp of 1 each) and the final f32 rounding.
    mag = np.abs(x).max(axis=-1, keepdims=True)
    tol = 2 * mag * 2.0**-24 + np.abs(want) * 2.0**-24
    assert np.all(np.abs(got - want) <= tol), np.abs(got - want).max()
    np.testing.assert_array_equal(got[..., rotary_dim:], x[..., rotary_dim:])
    return got


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("d,rotary_dim", [(64, 64), (64, 32), (80, 20), (128, 64), (8, 2)])
def test_matches_torch_formulas(interleaved, d, rotary_dim):
    rng = np.random.default_rng(d + rotary_dim)
    x = rng.standard_normal((2, 7, 3, d), dtype=np.float32)
    pos = rng.integers(0, 300_000, (2, 7)).astype(np.int64)  # past 100k
    pos[0, :3] = [0, 1, 100_001]
    check(x, pos, rotary_dim, 10000.0, interleaved)
    check(x, pos.astype(np.int32), rotary_dim, 500000.0, interleaved)
    check(x, pos[1], rotary_dim, 10000.0, interleaved)  # (L) positions shared by the batch


def test_layouts_are_not_interchangeable():
    """The mutation check: comparing one layout's output with the other's formula fails."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 5, 2, 16), dtype=np.float32)
    pos = np.arange(5, dtype=np.int64) * 1000
    for interleaved in (False, True):
        got = multihead.apply_rotary(x, pos, rotary_dim=16, interleaved=interleaved)
        other = torch_rotary(x, pos, 16, 10000.0, not interleaved)
        assert np.abs(got - other).max() > 1e-2


def test_errors():
    x = np.zeros((1, 3, 2, 8), np.float32)
    pos = np.arange(3)
    cases = [
        (lambda: multihead.apply_rotary(x, pos, rotary_dim=7), "options.rotary_dim", ""),
        (lambda: multihead.apply_rotary(x, pos, rotary_dim=10), "options.rotary_dim", ""),
        (lambda: multihead.apply_rotary(x, pos, rotary_dim=8, base=-1.0), "options.base", ""),
        (lambda: multihead.apply_rotary(x, pos.astype(np.float32), rotary_dim=8), "positions", "dtype"),
        (lambda: multihead.apply_rotary(x, -pos, rotary_dim=8), "positions", "element 1"),
        (lambda: multihead.apply_rotary(x, np.arange(4), rotary_dim=8), "positions", "dim 0 (L)"),
        (lambda: multihead.apply_rotary(x.astype(np.float64), pos, rotary_dim=8), "x", "dtype"),
        (lambda: multihead.apply_rotary(x[0], pos, rotary_dim=8), "x", "rank"),
    ]
    for call, tensor, dim in cases:
        with pytest.raises(multihead.Error) as info:
            call()
        assert (info.value.tensor, info.value.dim) == (tensor, dim), str(info.value)


def test_strided_input_and_original_untouched():
    rng = np.random.default_rng(9)
    big = rng.standard_normal((2, 4, 6, 16), dtype=np.float32)
    x = big[:, :, ::2, :]  # every other head: a strided view read in place
    keep = big.copy()
    got = multihead.apply_rotary(x, np.arange(4, dtype=np.int32) * 40_000, rotary_dim=12)
    np.testing.assert_array_equal(big, keep)
    np.testing.assert_array_equal(got, multihead.apply_rotary(np.ascontiguousarray(x), np.arange(4) * 40_000,
                                                              rotary_dim=12))
