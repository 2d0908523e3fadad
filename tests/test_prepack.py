"""Pre-packed linear weights: used only where they apply, and the same products."""

from __future__ import annotations

import pytest

from guardrail.classifiers.prepack import packed_linears

torch = pytest.importorskip("torch")


def _mlp(dtype: object) -> object:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 96), torch.nn.SiLU(), torch.nn.Linear(96, 32, bias=False)
    ).to(dtype)


def test_only_bf16_on_a_cpu() -> None:
    assert packed_linears(_mlp(torch.float32), "cpu") is None
    assert packed_linears(_mlp(torch.bfloat16), "cuda") is None
    assert packed_linears(torch.nn.SiLU(), "cpu") is None  # nothing to pack


def test_packed_products_match_and_are_undone() -> None:
    net = _mlp(torch.bfloat16)
    packed = packed_linears(net, torch.device("cpu"))
    if packed is None:
        pytest.skip("no oneDNN bf16 packing in this torch build")
    with torch.inference_mode():
        for rows in (1, 5, 300):
            x = torch.randn(2, rows, 64).to(torch.bfloat16)
            want = net(x)
            with packed.active():
                assert all("forward" in vars(m) for m in net if isinstance(m, torch.nn.Linear))
                got = net(x)
            torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
            assert not any("forward" in vars(m) for m in net)  # the class's forward again


def test_an_error_inside_still_restores() -> None:
    net = _mlp(torch.bfloat16)
    packed = packed_linears(net, "cpu")
    if packed is None:
        pytest.skip("no oneDNN bf16 packing in this torch build")
    with pytest.raises(RuntimeError), torch.inference_mode(), packed.active():
        raise RuntimeError("boom")
    assert not any("forward" in vars(m) for m in net)
