"""A minimal vLLM stand-in serving the tiny trained guard on a loopback server.

It loads the checkpoint with transformers, renders the request's messages with the
checkpoint's own chat template (``tokenize=False``), tokenizes the rendered text
with special tokens parsed (as vLLM does, hence the client-side escaping), decodes
greedily and answers with the content and per-token top logprobs.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loopback import JSONResponse, LoopbackServer, Request, chat_completion

CHAT = "/v1/chat/completions"
SERVED_NAME = "tiny-guard"


class TinyGuardServer:
    """A minimal vLLM stand-in: chat template -> tokenize -> greedy decode -> logprobs."""

    def __init__(self, model_dir: Path, *, reasoning_parser: bool = False) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.stop_ids = set(self.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"]))
        self.reasoning_parser = reasoning_parser
        self.prompt_ids: list[list[int]] = []  # what the "server" actually fed the model
        self._lock = threading.Lock()  # one model, one request at a time (like one GPU)

    def __call__(self, request: Request) -> Any:
        body = request.json
        if body.get("model") != SERVED_NAME:
            message = f"The model `{body.get('model')}` does not exist."
            return JSONResponse({"object": "error", "message": message, "code": 404}, 404)
        text = self.tokenizer.apply_chat_template(body["messages"], tokenize=False)
        # vLLM: add_special_tokens=False for chat, and markup in the text IS parsed
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        with self._lock:
            self.prompt_ids.append(list(ids))
            generated, steps = self._greedy(ids, int(body.get("max_tokens") or 16))
        content = self.tokenizer.decode(generated, skip_special_tokens=True)
        logprobs = None
        if body.get("logprobs"):
            logprobs = self._logprobs(generated, steps, int(body.get("top_logprobs") or 0))
        if self.reasoning_parser:  # a reasoning parser that swallowed the whole verdict
            return chat_completion(
                None, model=SERVED_NAME, reasoning_content=content, logprobs=logprobs
            )
        return chat_completion(content, model=SERVED_NAME, logprobs=logprobs)

    def _greedy(self, ids: list[int], max_tokens: int) -> tuple[list[int], list[Any]]:
        torch = self.torch
        with torch.no_grad():
            out = self.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=sorted(self.stop_ids),
                pad_token_id=self.tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        generated = out.sequences[0, len(ids) :].tolist()
        steps = [torch.log_softmax(step[0].float(), dim=-1) for step in out.logits]
        return generated, steps

    def _token_text(self, token_id: int) -> str:
        # vLLM decodes each token on its own; special tokens come out as ""
        return str(self.tokenizer.decode([token_id], skip_special_tokens=True))

    def _logprobs(self, generated: list[int], steps: list[Any], top_n: int) -> list[Any]:
        entries = []
        for token_id, logp in zip(generated, steps, strict=True):
            top = self.torch.topk(logp, top_n) if top_n else None
            alternatives = (
                [
                    {"token": self._token_text(int(i)), "logprob": float(v)}
                    for v, i in zip(top.values, top.indices, strict=True)
                ]
                if top is not None
                else []
            )
            entries.append(
                {
                    "token": self._token_text(token_id),
                    "logprob": max(float(logp[token_id]), -9999.0),
                    "top_logprobs": alternatives,
                }
            )
        return entries


@contextmanager
def serve_tiny_guard(model_dir: Path) -> Iterator[str]:
    """Serve the tiny guard on 127.0.0.1; yields the ``/v1`` base URL."""
    app = TinyGuardServer(model_dir)
    with LoopbackServer() as server:
        server.route("POST", CHAT, app)
        yield f"{server.url}/v1"
