"""What an evaluation runs on, behind one small interface: local weights, or a remote generator
(a deployment as it is served, an external endpoint).

    target.model_hash                        the prediction cache's model key
    target.prompt(where, definition, text, messages) -> Prompt
                                             one row's request; Prompt.text is what the per-sample
                                             rows store as "the prompt exactly as sent"
    target.generate(prompts, max_new_tokens, tools) -> [str]   greedy completions
    target.weights() -> (model, tokenizer)   local only: likelihood and perplexity need them
    target.close()

A chat prompt (`messages` given) is rendered by a local target with the model's chat template
(workers/core/inference/chat.py, the serving engine's renderer) and tokenized without adding
special tokens again (the template wrote them); a remote target sends the messages and the
server applies its template. A remote reply's tool calls come back as `<tool_call>` blocks in
the text (clients.Reply.output), as a local model writes them."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from workers.core.data.packing import sha256_file
from workers.core.specs import SpecError


CHATML_TURN = "<|im_start|>"
EVAL_KV_BYTES = 1024**3  # the engine's KV cache for a local evaluation (EngineGenerator)
EVAL_KV_TOKENS = 24576
EVAL_CONCURRENT = 32


@dataclass(frozen=True)
class Prompt:
    text: str  # as stored in the per-sample rows
    messages: list | None = None  # a chat prompt's messages (what a remote target sends)


def model_content_hash(model_dir: Path) -> str:
    """sha256 over the model folder's files (relative names and contents): the cache key of a
    model version, whatever folder it is loaded from."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0" + sha256_file(path).encode() + b"\0")
    return digest.hexdigest()


def remote_hash(identity: tuple) -> str:
    """The cache key of a remote target: ("deployment", id, served version uid) or ("endpoint",
    base URL, model name[, revision])."""
    return hashlib.sha256(json.dumps(list(identity), separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------------------------------- local


def load_model(model_dir: Path, seed: int, adapter_dir: Path | None = None):
    """The model and tokenizer of `model_dir`, or of the LoRA adapter in `adapter_dir` applied to
    it with peft (unmerged: what was trained, as it was trained)."""
    import torch

    from workers.core.modelstore.loading import load_causal_lm

    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if adapter_dir is not None:
        return load_causal_lm(adapter_dir, base_folder=model_dir, device=device)
    return load_causal_lm(model_dir, device=device)


class EngineGenerator:
    """Greedy completions through the continuous-batching engine around the loaded model,
    started on first use (a run without generation never starts it). `templated` prompts were
    rendered by a chat template: they are tokenized without adding special tokens."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer, self.engine = model, tokenizer, None

    def __call__(self, prompts: list[str], max_new_tokens: int, *, templated: bool = False) -> list[str]:
        from workers.core.inference.engine import Engine, EngineConfig, EngineRequest, blocks_for_bytes
        from workers.core.inference.sampling import SamplingParams

        if self.engine is None:
            config = EngineConfig()
            config.max_new_tokens_cap = max(config.max_new_tokens_cap, max_new_tokens)
            # An evaluation queues a whole batch at once: the serving default (256 MiB, 5,824
            # tokens for SmolLM2) ran 100% full and held the batch to a few requests at a time;
            # 1 GiB, at most EVAL_KV_TOKENS (the manager's attention mask grows with it), lets
            # EVAL_CONCURRENT requests of a few hundred tokens decode together.
            config.max_concurrent = EVAL_CONCURRENT
            if self.model.device.type == "cpu":  # on a GPU the manager sizes the cache from free memory
                config.num_blocks = min(blocks_for_bytes(self.model, EVAL_KV_BYTES, config.block_size),
                                        EVAL_KV_TOKENS // config.block_size)
            self.engine = Engine.from_model(config, self.model, self.tokenizer)
            self.engine.start()
        handles = []
        for prompt in prompts:
            sampling = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
            if templated:
                ids = list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
                request = EngineRequest(prompt_ids=ids, max_tokens_explicit=False, sampling=sampling)
            else:
                request = EngineRequest(prompt=prompt, max_tokens_explicit=False, sampling=sampling)
            handles.append(self.engine.submit(request))
        texts = []
        for handle in handles:
            final = handle.result(timeout=600)
            if final.get("type") != "end":
                raise RuntimeError(f"generation failed: {str(final.get('message') or final)[:300]}")
            texts.append(final["text"])
        return texts

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, *, templated: bool = False) -> list[str]:
    """Greedy completions of a batch of prompts (left-padded, so every row ends at the prompt)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    enc = _pad_left(tokenizer, prompts, pad, model.device, add_special_tokens=not templated)
    limit = getattr(model.config, "max_position_embeddings", None)
    budget = max_new_tokens if not limit else max(1, min(max_new_tokens, limit - enc["input_ids"].shape[1]))
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=budget, pad_token_id=pad)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def _pad_left(tokenizer, prompts, pad, device, add_special_tokens: bool = True):
    """Left-padded ids and mask (without touching the shared tokenizer's padding side)."""
    import torch

    ids = [list(i) for i in tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"]]
    width = max(map(len, ids))
    input_ids = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=device)
    mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=device)
    return {"input_ids": input_ids, "attention_mask": mask}


class LocalTarget:
    """The weights in `model_dir`, loaded on first need (a fully cached run loads nothing but,
    for chat benchmarks, the tokenizer)."""

    remote = False

    def __init__(self, model_dir: Path, *, seed: int = 0, generator: str = "engine", model=None, tokenizer=None,
                 adapter_dir: Path | None = None) -> None:
        self.model_dir, self.seed, self.generator_kind = Path(model_dir), seed, generator
        self.adapter_dir = Path(adapter_dir) if adapter_dir else None
        self.model, self.tokenizer, self.engine = model, tokenizer, None
        self.model_hash = model_content_hash(self.model_dir)
        if self.adapter_dir is not None:  # base + adapter: a key of its own
            self.model_hash = hashlib.sha256(f"{self.model_hash}+{model_content_hash(self.adapter_dir)}".encode()).hexdigest()

    def weights(self):
        if self.model is None:
            self.model, self.tokenizer = load_model(self.model_dir, self.seed, self.adapter_dir)
        return self.model, self.tokenizer

    def _tokenizer(self):
        if self.tokenizer is None:
            from workers.core.modelstore.loading import load_tokenizer

            # an adapter may carry its own tokenizer (e.g. with a chat template it was trained on)
            self.tokenizer = load_tokenizer(*([self.adapter_dir] if self.adapter_dir else []), self.model_dir)
        return self.tokenizer

    def prompt(self, where: str, definition: dict, text: str, messages: list | None) -> Prompt:
        if messages is None:
            return Prompt(text)
        from workers.core.inference.chat import NAMED_TEMPLATES, render_chat, resolve_template, template_supports_tools
        from workers.core.inference.errors import InvalidRequest

        tokenizer = self._tokenizer()
        template = resolve_template(tokenizer, definition["chat_template"])
        if not template:
            raise SpecError(f"{where}.chat", "this model has no chat template: set chat to false, or name a "
                                             "chat_template (chatml)")
        tools = definition["tools"] or None
        if tools and not template_supports_tools(template):
            if definition["chat_template"] or CHATML_TURN not in template:
                raise SpecError(f"{where}.tools", "this model's chat template does not render tools: name a "
                                                  "chat_template that does (chatml-tools), or leave tools out")
            # A ChatML model whose own template drops tools (SmolLM2's): the same turns with the
            # Hermes tools block, rather than a prompt that silently lacks the tools.
            template = NAMED_TEMPLATES["chatml-tools"]
        try:
            return Prompt(render_chat(tokenizer, template, messages, tools), messages)
        except InvalidRequest as error:
            raise SpecError(f"{where}.chat", f"the chat template could not render a prompt: {error.message}") from None

    def generate(self, prompts: list[Prompt], max_new_tokens: int, tools: list | None = None) -> list[str]:
        model, tokenizer = self.weights()
        templated = {p.messages is not None for p in prompts}
        assert len(templated) == 1, "one benchmark's prompts are all chat or all plain"
        texts, chat = [p.text for p in prompts], templated.pop()
        if self.generator_kind == "engine":
            if self.engine is None:
                self.engine = EngineGenerator(model, tokenizer)
            return self.engine(texts, max_new_tokens, templated=chat)
        return generate(model, tokenizer, texts, max_new_tokens, templated=chat)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


# ------------------------------------------------------------------------------------ remote


class RemoteTarget:
    """A deployment or an endpoint (clients.py): text in, text out; the client's `send_many`
    runs a batch together (queued at once on a deployment, in parallel on an endpoint)."""

    remote = True

    def __init__(self, client, identity: tuple) -> None:
        self.client, self.identity = client, identity
        self.model_hash = remote_hash(identity)

    def weights(self):
        raise SpecError("target", "a remote target has no weights: likelihood and perplexity need a model target")

    def prompt(self, where: str, definition: dict, text: str, messages: list | None) -> Prompt:
        if messages is None:
            return Prompt(text)
        return Prompt(json.dumps(messages, ensure_ascii=False), messages)  # the server applies its own template

    def generate(self, prompts: list[Prompt], max_new_tokens: int, tools: list | None = None) -> list[str]:
        from workers.core.evaluation.clients import request

        requests = [request(p.messages if p.messages is not None else p.text, tools=tools if p.messages else None,
                            max_tokens=max_new_tokens) for p in prompts]
        return [reply.output() for reply in self.client.send_many(requests)]

    def close(self) -> None:
        self.client.close()


def open_target(spec, *, model=None, tokenizer=None, api_key: str | None = None, redis_url: str | None = None):
    """The spec's target: its weights (model/tokenizer may be passed already loaded) or a client."""
    if spec.target == "model":
        return LocalTarget(Path(spec.model_dir), seed=spec.seed, generator=spec.generator, model=model, tokenizer=tokenizer,
                           adapter_dir=Path(spec.adapter_dir) if spec.adapter_dir else None)
    from workers.core.evaluation.clients import open_client

    if spec.target == "deployment":
        client = open_client("deployment", deployment_id=spec.deployment_id, redis_url=redis_url,
                             timeout_s=spec.request_timeout_s)
        return RemoteTarget(client, ("deployment", spec.deployment_id, spec.target_revision))
    client = open_client("endpoint", base_url=spec.endpoint_base_url, model=spec.endpoint_model, api_key=api_key,
                         timeout_s=spec.request_timeout_s)
    identity = ("endpoint", spec.endpoint_base_url, spec.endpoint_model)
    return RemoteTarget(client, identity + ((spec.target_revision,) if spec.target_revision else ()))
