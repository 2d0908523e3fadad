"""Linear weights pre-packed for oneDNN, for a bf16 model on a CPU.

A bf16 ``nn.Linear`` on a CPU runs oneDNN's matmul, which lays the weight out in the
blocked format its kernel reads (VNNI pairs for AMX and AVX512_BF16) on every call:
the copy reads and writes the whole weight each time, which for a few hundred rows
costs about as much as the product itself. :class:`PackedLinears` lays each weight
out once (``torch.ops.mkldnn._reorder_linear_weight``, the packing torch's own
compiler uses) and, while :meth:`PackedLinears.active` is entered, runs the module's
linear layers on the packed copies (``torch.ops.mkldnn._linear_pointwise``).

The same kernel computes the same products, but its blocking may sum a dot product
in another order, so an output can differ from ``F.linear``'s in its last bit, as
it can between two batch shapes. The packed copies take extra memory (one more
copy of every linear weight) and are made on first use: weights changed after that
are not seen.

These are private torch operators, so :func:`packed_linears` checks they exist and
agree with ``F.linear`` on a probe before anything uses them, and returns ``None``
(plain ``F.linear``) otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["PACK_ROWS", "PackedLinears", "packed_linears"]

PACK_ROWS = 256
"""The row count oneDNN chooses the packed layout for (any count runs on it)."""


class PackedLinears:
    """The ``nn.Linear`` layers of a module, run on pre-packed weights while active."""

    def __init__(self, module: Any) -> None:
        import torch

        self._layers = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        self._packed: list[Any] | None = None

    def _pack(self) -> list[Any]:
        import torch

        reorder = torch.ops.mkldnn._reorder_linear_weight
        with torch.inference_mode():
            return [reorder(layer.weight.detach(), PACK_ROWS) for layer in self._layers]

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within this block, the layers' forward runs on the packed weights."""
        import torch

        if self._packed is None:
            self._packed = self._pack()
        run = torch.ops.mkldnn._linear_pointwise
        for layer, packed in zip(self._layers, self._packed, strict=True):

            def forward(x: Any, packed: Any = packed, bias: Any = layer.bias) -> Any:
                return run(x, packed, bias, "none", [], "")

            vars(layer)["forward"] = forward  # an instance attribute: ``__call__`` finds it
        try:
            yield
        finally:
            for layer in self._layers:
                vars(layer).pop("forward", None)  # back to the class's forward


def _probe(torch: Any) -> bool:
    """Whether packed products agree with ``F.linear``'s here (shapes of several blockings)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(96, 64, generator=generator).to(torch.bfloat16)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
    for rows in (1, 7, 300):
        x = torch.randn(1, rows, 64, generator=generator).to(torch.bfloat16)
        got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
        want = torch.nn.functional.linear(x, weight)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-2, atol=1e-2):
            return False
    return True


def packed_linears(module: Any, device: Any) -> PackedLinears | None:
    """Pre-packed linears for ``module``, or ``None`` where plain ``F.linear`` is the path.

    That is anywhere but a CPU, for weights other than bf16, and where torch lacks
    oneDNN's packing operators or they disagree with ``F.linear`` on a probe.
    """
    import torch

    kind = getattr(device, "type", str(device).split(":")[0])
    layers = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if kind != "cpu" or not layers:
        return None
    if any(m.weight.dtype != torch.bfloat16 or m.weight.device.type != "cpu" for m in layers):
        return None
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        if not (
            torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
            and hasattr(ops, "_reorder_linear_weight")
            and hasattr(ops, "_linear_pointwise")
        ):
            return None
        with torch.inference_mode():
            if not _probe(torch):
                return None
    except (RuntimeError, AttributeError, TypeError):
        return None  # operators missing or refusing bf16 here: plain F.linear
    return PackedLinears(module)
