r"""The fast local decoder: a cached template head plus grammar-drafted, verified verdicts.

Greedy ``generate()`` recomputes the whole guard prompt for every request, then runs
about ten sequential decode steps with full-vocabulary logits at each. A verdict,
however, follows a fixed grammar (``Safety: <level>\nCategories: <category>``
``[\nRefusal: <yes/no>]<|im_end|>``), so :class:`FastDecoder`:

1. keeps the KV cache of the template head shared by every input of a stage (the
   instructions before the conversation) and computes only each input's suffix;
2. drafts the most likely verdict (``Safe``/``None``/``No``) and runs ONE forward
   pass over ``suffix + draft``, reading full-vocabulary logits only at the draft
   positions (the LM head is applied to those rows alone);
3. verifies the draft greedily: a draft token is accepted only when it is the
   unrestricted argmax at its position, exactly as greedy generation would pick it.
   At the first disagreement, if the model's choice is the first token of another
   valid value of that field, the draft is rewritten from there and only the new
   tokens are computed in the next pass (the cache is kept; rejected positions are
   masked out). Every field's first token is distinct, so each field costs at most
   one extra short pass.

Accepted verdicts are therefore token-for-token the text greedy decoding writes.
When the model would write anything the grammar cannot express (a malformed or
unexpected verdict, an extra line, a value split differently), the row is reported
as ``None`` and the caller falls back to ``generate()`` for it: the fast path never
invents a verdict. Each field's probabilities come from the next-token distribution
at its value position, restricted to the first tokens of the field's valid values
and renormalised.

Batches are cut to size: a pass right-pads every row to its longest suffix, so each
stage's rows are sorted by length and split into groups that minimise the estimated
cost (see :func:`length_groups` and ``FastPathOptions.pass_overhead_tokens``). The
groups' passes run one after the other, but each round of passes shares one LM-head
product (the vocabulary-sized matrix is read once per round, not once per row or
group), and the rows a round re-drafts are merged into a single pass whatever their
group or stage (their caches right-padded to a common length, the pads masked).
Grouping changes which rows share a pass, never a row's tokens or its verdict.

The KV caches are transformers' ``DynamicCache``, filled through ``Cache.update`` and
handed to the model under the keyword its forward takes: ``cache`` (transformers 5.x
from the release that renamed it; ``past_key_values`` is deprecated there) or
``past_key_values`` (earlier releases).

torch and transformers are imported lazily, with the model.
"""

from __future__ import annotations

import inspect
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from guardrail.classifiers.prepack import packed_linears
from guardrail.errors import ConfigurationError
from guardrail.qwen3guard import FIELD_VALUES, IM_END, FieldProbabilities
from guardrail.types import Stage

if TYPE_CHECKING:
    from guardrail.classifiers.encoding import GuardEncoder

__all__ = [
    "Draft",
    "FastDecoder",
    "FastPathOptions",
    "FastResult",
    "FastStats",
    "VerdictGrammar",
    "build_fast_decoder",
    "length_groups",
]

_HEADERS = {"safety": "Safety:", "categories": "\nCategories:", "refusal": "\nRefusal:"}
_DEFAULTS = {"safety": "Safe", "categories": "None", "refusal": "No"}
"""The draft's guess per field: the most common verdict."""
_STAGE_FIELDS = {
    Stage.PROMPT: ("safety", "categories"),
    Stage.RESPONSE: ("safety", "categories", "refusal"),
}
_PROB_NAMES = {"safety": "level", "categories": "category", "refusal": "refusal"}


@dataclass(frozen=True)
class FastResult:
    """A verified verdict: greedy decoding's exact text and per-field probabilities."""

    text: str
    probs: FieldProbabilities
    length: int
    """Verdict tokens, the stop token excluded."""
    passes: int
    """Forward passes this input needed (1 when the draft was right)."""


@dataclass
class FastStats:
    """Counters of the fast decoder."""

    inputs: int = 0
    """Inputs decoded."""
    left: int = 0
    """Inputs where greedy decoding leaves the verdict grammar (the caller runs generate())."""
    passes: int = 0
    """Batched forward passes run."""


@dataclass(frozen=True)
class Draft:
    """A drafted verdict as tokens: what the decoder feeds and verifies."""

    ids: tuple[int, ...]
    """Verdict tokens ending with the stop token."""
    slots: dict[int, int]
    """Position in ``ids`` of each field value's first token -> field index."""
    values: tuple[str, ...]
    """The value drafted for each field."""


class VerdictGrammar:
    """Token sequences of the verdict lines, derived from the checkpoint's tokenizer.

    ``encode`` must tokenize plain text exactly as the checkpoint's tokenizer does.
    Raises ``ValueError`` when the verdict cannot be drafted piecewise: values of a
    field that share a first token, or pieces that tokenize differently in context.
    """

    def __init__(self, encode: Callable[[str], list[int]], stop_id: int) -> None:
        self.stop_id = stop_id
        self.headers = {name: tuple(encode(text)) for name, text in _HEADERS.items()}
        self.values: dict[str, dict[str, tuple[int, ...]]] = {}
        self.first: dict[str, dict[int, str]] = {}
        for name, values in FIELD_VALUES.items():
            tokens = {v: tuple(encode(" " + v)) for v in values}
            first = {ids[0]: v for v, ids in tokens.items() if ids}
            if len(first) != len(values):
                raise ValueError(f"the values of {name!r} do not begin with distinct tokens")
            self.values[name], self.first[name] = tokens, first
        # The draft is assembled from pieces: it must equal the tokenization of the
        # whole verdict text, or greedy decoding would write other tokens.
        for stage, names in _STAGE_FIELDS.items():
            for combo in itertools.product(*(FIELD_VALUES[n] for n in names)):
                text = "".join(_HEADERS[n] + " " + v for n, v in zip(names, combo, strict=True))
                if list(self.draft(stage, combo).ids[:-1]) != encode(text):
                    raise ValueError(f"the verdict {text!r} does not tokenize piecewise")

    def draft(
        self, stage: Stage, chosen: Sequence[str], guess: Mapping[str, str] | None = None
    ) -> Draft:
        """The verdict with ``chosen`` values; ``guess`` (else defaults) for the fields after."""
        ids: list[int] = []
        slots: dict[int, int] = {}
        values: list[str] = []
        guess = guess or _DEFAULTS
        for k, name in enumerate(_STAGE_FIELDS[stage]):
            values.append(chosen[k] if k < len(chosen) else guess.get(name, _DEFAULTS[name]))
            ids += self.headers[name]
            slots[len(ids)] = k
            ids += self.values[name][values[-1]]
        return Draft((*ids, self.stop_id), slots, tuple(values))


def length_groups(lengths: Sequence[int], overhead: float) -> list[list[int]]:
    """Indices of ``lengths`` split into groups of similar length, shortest first.

    A pass pads every row to its longest one, so a group costs about
    ``overhead + rows * longest`` token computations; the groups returned minimise
    the sum of that over groups (a dynamic programme over the rows sorted by length:
    optimal groups are runs of that order). Each index appears exactly once; rows
    of equal length, and ties in cost, stay together.
    """
    order = sorted(range(len(lengths)), key=lambda k: lengths[k])
    sizes = [lengths[k] for k in order]
    best = [0.0] + [float("inf")] * len(order)  # best[j]: cost of the first j rows
    cut = [0] * (len(order) + 1)  # where the last group of the first j rows begins
    for j in range(1, len(order) + 1):
        for i in range(j):
            if i and sizes[i - 1] == sizes[i]:
                continue  # never split rows of equal length
            cost = best[i] + overhead + (j - i) * sizes[j - 1]
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups: list[list[int]] = []
    j = len(order)
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


@dataclass
class _Row:
    index: int
    stage: Stage
    suffix: list[int]
    draft: Draft
    probs: dict[str, dict[str, float]] = field(default_factory=dict)
    start: int = -1
    """Draft tokens before this one are verified; -1 before the first pass."""
    passes: int = 0
    offset: int = 0
    """Head tokens shared from the stage's cached head (the suffix follows them)."""


@dataclass
class _Pass:
    """Rows decoded together: their cache and its attention mask (one row each)."""

    rows: list[_Row]
    cache: Any
    mask: Any
    first: bool = True
    """The next pass is the first: it feeds the suffixes too."""


_PASS_OVERHEAD_TOKENS = {"cpu": 24, "cuda": 512}
"""Default ``FastPathOptions.pass_overhead_tokens`` by device type (others: ``cuda``'s).

On a CPU a forward pass is compute-bound from a few dozen tokens on: a padding token
costs as much as a real one, while one more pass costs little: re-reading the body's
weights and the Python overhead of its layers (the LM head is shared by every pass
of a round), worth a couple of dozen tokens.
On a GPU a small batch is memory-bound: a pass of a few hundred tokens costs about
as much as one of a few dozen, so padding is nearly free and splitting rarely pays.
"""


@dataclass(frozen=True)
class FastPathOptions:
    """Knobs of the fast decoder, passed as ``LocalQwen3Guard(..., fast_path=...)``.

    ``pass_overhead_tokens``, ``use_head_cache`` and ``prepack_weights`` change how
    the work is done, never the verdict greedy decoding writes (up to the rounding of
    the last bit of a product, see ``prepack_weights``); ``stop_ids`` is a test hook.
    """

    pass_overhead_tokens: float | None = None
    """What one more forward pass costs, in tokens of padding: the batch-splitting knob.

    ``None`` takes the device's default (24 on a CPU, 512 on a GPU). 0 gives each
    distinct suffix length its own pass; a huge value keeps each stage's rows in one
    pass. Only the number of passes changes, never a row's tokens (see
    :func:`length_groups`).
    """
    use_head_cache: bool = True
    """Reuse the cached template head (tests switch it off to compare; no other effect)."""
    prepack_weights: bool = True
    """Run the body's linear layers on weights pre-packed for oneDNN, where that applies
    (bf16 on a CPU, see :mod:`~guardrail.classifiers.prepack`): about twice the matmul
    speed for one more copy of the linear weights in memory. The products may differ
    from ``F.linear``'s in their last bit, as between two batch shapes."""
    stop_ids: frozenset[int] | None = None
    """Test hook: the tokens accepted at a verdict's end, instead of the guard's stop
    tokens. Tokens the model never writes make every draft fail at its end, so every
    input takes the ``generate()`` fallback; never set it otherwise."""

    def __post_init__(self) -> None:
        overhead = self.pass_overhead_tokens
        if overhead is not None and not overhead >= 0:
            raise ConfigurationError(
                f"FastPathOptions.pass_overhead_tokens must be >= 0, got {overhead!r}"
            )
        if self.stop_ids is not None and not self.stop_ids:
            raise ConfigurationError("FastPathOptions.stop_ids must not be empty")


def cache_keyword(body: Any) -> str:
    """The keyword ``body``'s forward takes its KV cache under: ``cache``, else ``past_key_values``.

    Read from the signature (transformers' deprecation wrappers keep the wrapped
    one), so no deprecated keyword is ever passed where the current one exists.
    """
    try:
        names = inspect.signature(body.forward).parameters
    except (TypeError, ValueError):  # no readable signature: the long-standing name
        return "past_key_values"
    return "cache" if "cache" in names else "past_key_values"


def returned_cache(output: Any) -> Any:
    """The KV cache a forward pass returned (``cache``, or ``past_key_values`` before it)."""
    found = getattr(output, "cache", None)
    return found if found is not None else output.past_key_values


def filled_cache(config: Any, layers: Sequence[tuple[Any, Any]]) -> Any:
    """A ``DynamicCache`` for ``config`` holding ``layers``' (keys, values), layer by layer."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


def build_fast_decoder(
    net: Any,
    encoder: GuardEncoder,
    stop_ids: frozenset[int],
    device: Any,
    options: FastPathOptions | None = None,
) -> FastDecoder | None:
    """The fast decoder for a checkpoint, or ``None`` where ``generate()`` is the only exact path.

    That is when ``<|im_end|>`` (else the eos token) does not end generation, when
    the verdict cannot be drafted piecewise (see :class:`VerdictGrammar`), or when
    ``net`` has no separable decoder body and LM head.
    """
    tokenizer = encoder.tokenizer
    stop = tokenizer.get_vocab().get(IM_END, tokenizer.eos_token_id)
    if stop not in stop_ids:
        return None
    try:
        grammar = VerdictGrammar(encoder.plain_ids, stop)
    except ValueError:
        return None  # e.g. two levels share a first token

    def decode(ids: list[int]) -> str:  # as the generate path turns ids into text
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    heads = encoder.template_heads()
    try:
        return FastDecoder(net, grammar, heads, stop_ids, decode, device, options)
    except (AttributeError, NotImplementedError, ValueError):
        return None  # no separable decoder body / LM head


class FastDecoder:
    """Decode verdicts with a cached template head and verified grammar drafts.

    ``net`` is a transformers causal LM (``get_decoder()`` and
    ``get_output_embeddings()`` are used), ``heads`` the token prefix shared by every
    input of each stage, ``stop_ids`` every token that ends generation, ``decode``
    turns verdict ids into text as the generate path does, ``options`` the knobs of
    :class:`FastPathOptions`. Call it under ``torch.inference_mode()``.
    """

    max_passes = 5
    """Enough for three fields (at most one re-draft each); more means a fallback."""

    def __init__(
        self,
        net: Any,
        grammar: VerdictGrammar,
        heads: Mapping[Stage, Sequence[int]],
        stop_ids: frozenset[int],
        decode: Callable[[list[int]], str],
        device: Any,
        options: FastPathOptions | None = None,
    ) -> None:
        options = options or FastPathOptions()
        self._net = net
        self._body = net.get_decoder()
        self._cache_keyword = cache_keyword(self._body)
        self._lm_head = net.get_output_embeddings()
        self._packed = packed_linears(self._body, device) if options.prepack_weights else None
        self._grammar = grammar
        self._head_ids = {stage: tuple(ids) for stage, ids in heads.items()}
        self._head_cache: dict[Stage, list[tuple[Any, Any]]] = {}
        self._stop_ids = options.stop_ids if options.stop_ids is not None else stop_ids
        self._decode = decode
        self._device = device
        self._use_head_cache = options.use_head_cache
        kind = getattr(device, "type", str(device).split(":")[0])
        self._pass_overhead_tokens: float = (
            options.pass_overhead_tokens
            if options.pass_overhead_tokens is not None
            else _PASS_OVERHEAD_TOKENS.get(kind, 512)
        )
        self.stats = FastStats()
        """What the decoder has done so far (read it; the decoder updates it)."""
        # Verified values per (stage, level, field): a re-drafted level drafts the
        # fields after it with the most common values seen with that level, so a
        # recurring category costs two passes instead of three.
        self._seen: dict[tuple[Stage, str, str], Counter[str]] = defaultdict(Counter)

    # ------------------------------------------------------------------ public

    @property
    def grammar(self) -> VerdictGrammar:
        """The verdict grammar drafts are built from (its ``draft()`` gives their tokens)."""
        return self._grammar

    @property
    def heads(self) -> Mapping[Stage, tuple[int, ...]]:
        """Per stage, the template head whose keys and values are computed once and shared."""
        return dict(self._head_ids)

    @property
    def pass_overhead_tokens(self) -> float:
        """The batch-splitting knob in use (see :attr:`FastPathOptions.pass_overhead_tokens`)."""
        return self._pass_overhead_tokens

    @property
    def prepacked(self) -> bool:
        """Whether the body's linear layers run on pre-packed weights (``prepack_weights``)."""
        return self._packed is not None

    @property
    def use_head_cache(self) -> bool:
        """Whether the template heads are cached (see :class:`FastPathOptions`)."""
        return self._use_head_cache

    def prepare(self) -> None:
        """Compute each stage's head cache now rather than on first use.

        Benchmarks call it to time decoding without it; call it under
        ``torch.inference_mode()``.
        """
        if self._use_head_cache:
            for stage in self._head_ids:
                self._head(stage)

    def forget(self) -> None:
        """Drop the values seen so far: re-drafts fall back to the defaults (benchmarks)."""
        self._seen.clear()

    def decode_batch(
        self,
        batch: Sequence[tuple[Stage, Sequence[int]]],
        *,
        force: Sequence[Sequence[str]] | None = None,
    ) -> list[FastResult | None]:
        """Verdicts for (stage, prompt ids) inputs; ``None`` where greedy would leave the grammar.

        ``force`` (benchmarks only) replaces the model's choices by the given
        values, so random-weight models run the same passes a real verdict needs.
        """
        results: list[FastResult | None] = [None] * len(batch)
        passes = []
        for stage in Stage:  # the stages have different heads: separate passes
            members = [k for k, (s, _) in enumerate(batch) if s is stage]
            lengths = [len(batch[k][1]) for k in members]
            for group in length_groups(lengths, self._pass_overhead_tokens):
                rows = [self._row(members[j], stage, batch[members[j]][1]) for j in group]
                passes.append(self._start(stage, rows))
        if passes:
            self._run(passes, results, force)
        self.stats.inputs += len(batch)
        self.stats.left += sum(r is None for r in results)
        return results

    def draft_logits(self, stage: Stage, prompts: Sequence[Sequence[int]]) -> list[Any]:
        """Logits predicting each token of the default draft, one pass, batched (for tests).

        Element ``k`` holds, for each draft token, the logits at the position before it:
        what ``net(prompt + draft)`` gives there, computed the fast path's way.
        """
        rows = [self._row(k, stage, ids) for k, ids in enumerate(prompts)]
        hidden = self._pass(self._start(stage, rows))
        out = []
        for k, row in enumerate(rows):
            at = [len(row.suffix) - 1 + q for q in range(len(row.draft.ids))]
            out.append(self._logits(hidden[k, at]))
        return out

    # --------------------------------------------------------------- internals

    def _row(self, index: int, stage: Stage, ids: Sequence[int]) -> _Row:
        return _Row(index, stage, list(ids), self._grammar.draft(stage, ()))

    def _head(self, stage: Stage) -> list[tuple[Any, Any]]:
        cached = self._head_cache.get(stage)
        if cached is None:
            import torch

            ids = torch.tensor([self._head_ids[stage]], device=self._device)
            with self._running():
                out = self._body(input_ids=ids, use_cache=True)
            cache = returned_cache(out)
            cached = [(layer.keys, layer.values) for layer in cache.layers]
            self._head_cache[stage] = cached
        return cached

    def _start(self, stage: Stage, rows: list[_Row]) -> _Pass:
        """A cache holding the head shared by ``rows``; cuts their suffixes to match."""
        import torch

        head = self._head_ids.get(stage, ()) if self._use_head_cache else ()
        length = len(head)
        for row in rows:  # the input may deviate from the head (unusual content): share less
            limit = min(length, len(row.suffix) - 1)
            n = next((i for i in range(limit) if row.suffix[i] != head[i]), limit)
            length = min(length, n)
        layers = []
        if length:
            b = len(rows)
            layers = [
                (k[:, :, :length].expand(b, -1, -1, -1), v[:, :, :length].expand(b, -1, -1, -1))
                for k, v in self._head(stage)
            ]
        cache = filled_cache(self._net.config, layers)
        for row in rows:
            row.suffix = row.suffix[length:]
            row.offset = length
        mask = torch.ones((len(rows), length), dtype=torch.long, device=self._device)
        return _Pass(rows, cache, mask)

    def _pass(self, group: _Pass) -> Any:
        """Feed each row its unverified draft (the suffix too on the first pass)."""
        import torch

        feeds, starts = [], []
        for row in group.rows:
            if group.first:
                feeds.append(row.suffix + list(row.draft.ids[:-1]))
                starts.append(row.offset)
            else:  # the token at ``start`` is verified but not yet in the cache
                feeds.append(list(row.draft.ids[row.start : -1]))
                starts.append(row.offset + len(row.suffix) + row.start)
        width = max(len(f) for f in feeds)
        ids = torch.zeros((len(feeds), width), dtype=torch.long)
        new_mask = torch.zeros((len(feeds), width), dtype=torch.long)
        for k, feed in enumerate(feeds):  # right padding: pads follow, so nothing attends to them
            ids[k, : len(feed)] = torch.tensor(feed)
            new_mask[k, : len(feed)] = 1
        positions = torch.tensor(starts)[:, None] + torch.arange(width)[None, :]
        full_mask = torch.cat([group.mask, new_mask.to(self._device)], dim=1)
        with self._running():
            out = self._body(
                input_ids=ids.to(self._device),
                attention_mask=full_mask,
                position_ids=positions.to(self._device),
                use_cache=True,
                **{self._cache_keyword: group.cache},
            )
        return out.last_hidden_state

    def _running(self) -> AbstractContextManager[None]:
        """The body's linear layers on packed weights where they are, else as they are."""
        return self._packed.active() if self._packed is not None else nullcontext()

    def _logits(self, hidden: Any) -> Any:
        """Full-vocabulary fp32 logits of ``hidden``'s rows (a few rows, one product).

        On a CPU, ``weight @ hidden.T``: with the vocabulary as the long side, oneDNN
        streams the weight as it is stored instead of re-laying it out per call (the
        product reads the whole weight for a handful of rows: memory-bound). The same
        dot products with the operands' roles swapped (an fp32 sum may round its last
        bit differently, as between two batch shapes).
        """
        head = self._lm_head
        weight, bias = getattr(head, "weight", None), getattr(head, "bias", None)
        if weight is None or bias is not None or weight.device.type != "cpu":
            return head(hidden).float()
        return (weight @ hidden.T).T.contiguous().float()

    def _run(
        self,
        groups: list[_Pass],
        results: list[FastResult | None],
        force: Sequence[Sequence[str]] | None,
    ) -> None:
        """Decode ``groups`` in rounds: a pass per group, then one LM head for all rows."""
        import torch

        grammar = self._grammar
        while groups:
            picked, spans, widths = [], [], []
            for group in groups:
                hidden = self._pass(group)
                self.stats.passes += 1
                widths.append(hidden.shape[1])
                take_row, take_col = [], []
                for k, row in enumerate(group.rows):
                    row.passes += 1
                    begin = row.start + 1  # first draft token this pass predicts
                    base = len(row.suffix) - 1 if group.first else -row.start - 1
                    at = list(range(begin, len(row.draft.ids)))
                    take_row += [k] * len(at)
                    take_col += [base + q for q in at]
                    spans.append(at)
                picked.append(hidden[take_row, take_col])
                del hidden
            # One LM-head product per round: its weight is read once, not once per row.
            logits = self._logits(torch.cat(picked))
            best = logits.argmax(dim=-1).tolist()
            cursor = 0
            survivors = []
            spans_iter = iter(spans)
            for group, fed_width in zip(groups, widths, strict=True):
                keep, valid_counts = [], []
                for k, row in enumerate(group.rows):
                    at = next(spans_iter)
                    here = slice(cursor, cursor + len(at))
                    cursor += len(at)
                    target = None
                    if force is not None:
                        target = grammar.draft(row.stage, force[row.index])
                    verdict, mismatch = self._verify(row, at, logits[here], best[here], target)
                    fed_before = 0 if group.first else row.start
                    if verdict == "done":
                        self._learn(row.stage, row.draft.values)
                        text = self._decode(list(row.draft.ids[:-1]))
                        probs = FieldProbabilities(
                            **{_PROB_NAMES[n]: p for n, p in row.probs.items()}
                        )
                        length = len(row.draft.ids) - 1
                        results[row.index] = FastResult(text, probs, length, row.passes)
                    elif verdict == "redraft" and row.passes < self.max_passes:
                        # Verified tokens keep their cache entries; rejected ones are masked out.
                        valid = (len(row.suffix) if group.first else 0) + mismatch - fed_before
                        valid_counts.append(valid)
                        row.start = mismatch
                        keep.append(k)
                    # any other outcome: greedy leaves the grammar; the caller runs generate()
                if keep:
                    survivors.append(self._select(group, keep, valid_counts, fed_width))
            groups = [self._merge(survivors)] if survivors else []

    def _learn(self, stage: Stage, values: Sequence[str]) -> None:
        for name, value in zip(_STAGE_FIELDS[stage][1:], values[1:], strict=True):
            self._seen[stage, values[0], name][value] += 1

    def _guess(self, stage: Stage, level: str) -> dict[str, str]:
        """The most common verified value of each field after ``level`` (defaults if none)."""
        guess = {}
        for name in _STAGE_FIELDS[stage][1:]:
            seen = self._seen.get((stage, level, name))
            guess[name] = seen.most_common(1)[0][0] if seen else _DEFAULTS[name]
        return guess

    def _select(self, group: _Pass, keep: list[int], valid: list[int], width: int) -> _Pass:
        """Rows ``keep`` of ``group`` after a pass ``width`` wide, ``valid`` tokens of it kept."""
        import torch

        new_cols = torch.zeros((len(keep), width), dtype=torch.long, device=self._device)
        for j, count in enumerate(valid):
            new_cols[j, :count] = 1
        index = torch.tensor(keep, device=self._device)
        mask = torch.cat([group.mask[index], new_cols], dim=1)
        if len(keep) < len(group.rows):
            group.cache.batch_select_indices(index)
        return _Pass([group.rows[k] for k in keep], group.cache, mask, first=False)

    def _merge(self, groups: list[_Pass]) -> _Pass:
        """One group of all rows: caches right-padded to a common length, the pads masked."""
        if len(groups) == 1:
            return groups[0]
        import torch
        from torch.nn.functional import pad

        total = max(g.mask.shape[1] for g in groups)
        layers = []
        for n in range(len(groups[0].cache.layers)):
            parts = [g.cache.layers[n] for g in groups]
            keys = [pad(p.keys, (0, 0, 0, total - p.keys.shape[2])) for p in parts]
            values = [pad(p.values, (0, 0, 0, total - p.values.shape[2])) for p in parts]
            layers.append((torch.cat(keys), torch.cat(values)))
        mask = torch.cat([pad(g.mask, (0, total - g.mask.shape[1])) for g in groups])
        cache = filled_cache(self._net.config, layers)
        return _Pass([row for g in groups for row in g.rows], cache, mask, first=False)

    def _verify(
        self,
        row: _Row,
        at: list[int],
        logits: Any,
        best: list[int],
        target: Draft | None,
    ) -> tuple[str, int]:
        """Greedy check of the draft: ("done" | "redraft" | "leave", first mismatch)."""
        grammar = self._grammar
        names = _STAGE_FIELDS[row.stage]
        for j, q in enumerate(at):
            choice = best[j] if target is None else target.ids[q]
            slot = row.draft.slots.get(q)
            if slot is not None:
                name = names[slot]
                first = grammar.first[name]
                candidates = list(first)
                restricted = logits[j, candidates].log_softmax(dim=-1).exp().tolist()
                row.probs[name] = dict.fromkeys(FIELD_VALUES[name], 0.0)
                for token, p in zip(candidates, restricted, strict=True):
                    row.probs[name][first[token]] = p
            if q == len(row.draft.ids) - 1:  # the stop position: any stop token ends it
                if choice in self._stop_ids:
                    return "done", q
                return "leave", q
            if choice == row.draft.ids[q]:
                continue
            if slot is not None and choice in grammar.first[names[slot]]:
                chosen = [*row.draft.values[:slot], grammar.first[names[slot]][choice]]
                row.draft = grammar.draft(row.stage, chosen, self._guess(row.stage, chosen[0]))
                return "redraft", q
            return "leave", q
        return "done", len(row.draft.ids)
