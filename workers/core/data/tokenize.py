"""Render a canonical record the way the trainer sees it: token ids, labels (-100 where there is
no loss) and the rendered text cut into loss / no-loss segments for highlighting in a browser
(what `xtuner log-dataset` prints).

    text        pretraining / continued pretraining: the tokenizer's own special tokens (a BOS
                for Llama-like tokenizers) + the text + EOS; loss on every token.
    chat        the chat template (the tokenizer's, or a template string given by the caller),
                tools passed to `apply_chat_template(tools=...)`; loss ONLY on the assistant
                turns: their content (or rendered tool calls) and the end-of-turn token that
                closes them. System, user and tool turns, role headers and the whitespace the
                template puts between turns carry no loss.
    qa          a two-turn chat: user = question, assistant = answer.
    preference  prompt + chosen rendered as a chat; loss only on the chosen continuation (the
                assistant turns of the prompt are context, as in DPO). `render_preference`
                gives the (chosen, rejected) pair.

`mode`: "auto" (the format's natural loss, above), "all" (loss on every token, e.g. continued
pretraining on chat transcripts) or "last" (only the final assistant turn, LLaMA-Factory's
`mask_history`).

How the assistant spans are found (see `assistant_char_spans`): from the template's own output,
never from a `{% generation %}` block (most templates lack one). Truncation keeps the head.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable

IGNORE_INDEX = -100
MODES = ("auto", "all", "last")
RENDERABLE = ("text", "chat", "qa", "preference")


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX (-100) where there is no loss
    text: str  # the rendered text of the kept tokens
    segments: list[dict]  # [{"text": str, "loss": bool}, ...] in order; "".join(texts) == text
    truncated: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def loss_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


# ---------------------------------------------------------------------------------------------
# public entry points


def render_record(
    record: dict,
    canonical: str,
    tokenizer,
    *,
    chat_template: str | None = None,
    max_length: int | None = None,
    mode: str = "auto",
) -> Rendered:
    """Token ids, labels and highlighted segments of one canonical record (module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be at least 1, got {max_length}")
    if canonical == "text":
        return _render_text(record, tokenizer, max_length=max_length)
    if canonical == "chat":
        messages = _require_messages(record, "messages")
        return render_chat(messages, tokenizer, tools=record.get("tools"), chat_template=chat_template,
                           max_length=max_length, mode=mode)
    if canonical == "qa":
        if not isinstance(record.get("question"), str) or not isinstance(record.get("answer"), str):
            raise ValueError("a qa record needs string 'question' and 'answer' fields")
        messages = [{"role": "user", "content": record["question"]},
                    {"role": "assistant", "content": record["answer"]}]
        return render_chat(messages, tokenizer, chat_template=chat_template, max_length=max_length, mode=mode)
    if canonical == "preference":
        return render_preference(record, tokenizer, chat_template=chat_template, max_length=max_length,
                                 mode=mode)[0]
    raise ValueError(f"cannot render canonical format {canonical!r} for training (renderable: {', '.join(RENDERABLE)})")


def render_preference(
    record: dict,
    tokenizer,
    *,
    chat_template: str | None = None,
    max_length: int | None = None,
    mode: str = "auto",
) -> tuple[Rendered, Rendered]:
    """(chosen, rejected): prompt + chosen and prompt + rejected, each with loss only on its own
    continuation (mode "auto"/"last"), so that a DPO trainer sums the log-probabilities of the
    label-bearing tokens of each."""
    prompt = _require_messages(record, "prompt", need_assistant=False)
    pair = []
    for side in ("chosen", "rejected"):
        continuation = _require_messages(record, side, need_assistant=False)
        if not any(m.get("role") == "assistant" for m in continuation):
            raise ValueError(f"a preference record's {side!r} needs an assistant turn")
        pair.append(render_chat(prompt + continuation, tokenizer, tools=record.get("tools"),
                                chat_template=chat_template, max_length=max_length, mode=mode,
                                loss_from=len(prompt)))
    return pair[0], pair[1]


def render_chat(
    messages: list[dict],
    tokenizer,
    *,
    tools: list[dict] | None = None,
    chat_template: str | None = None,
    max_length: int | None = None,
    mode: str = "auto",
    loss_from: int = 0,
) -> Rendered:
    """Render `messages` with the chat template; loss on the assistant turns at index >=
    `loss_from` (all of them in mode "auto", the last in "last", every token in "all")."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    messages = [_template_message(m) for m in messages]
    tools = tools or None
    template = _resolve_template(tokenizer, chat_template, tools)

    def render(conversation: list[dict], generation_prompt: bool) -> str:
        if not conversation:
            return ""
        return tokenizer.apply_chat_template(conversation, tools=tools, chat_template=template,
                                             add_generation_prompt=generation_prompt, tokenize=False)

    full = render(messages, False)
    warnings: list[str] = []
    if mode == "all":
        spans = [(0, len(full))]
    else:
        spans, warnings = assistant_char_spans(messages, render, tokenizer, full=full, loss_from=loss_from,
                                               template_key=template)
        if mode == "last":
            spans = spans[-1:]
        if not spans:
            warnings.append("no assistant turn to train on: every label is -100")
    ids, offsets = _encode_with_offsets(tokenizer, full, spans)
    flags = _flags_from_spans(offsets, spans)
    synthetic = [False] * len(ids)
    return _assemble(tokenizer, full, ids, offsets, synthetic, flags, max_length, warnings)


# ---------------------------------------------------------------------------------------------
# the masking method


def assistant_char_spans(
    messages: list[dict],
    render: Callable[[list[dict], bool], str],
    tokenizer,
    *,
    full: str | None = None,
    loss_from: int = 0,
    template_key: str | None = None,
) -> tuple[list[tuple[int, int]], list[str]]:
    """Character spans [start, end) of the assistant turns in `full` (= render(messages)), by
    rendering incremental prefixes of the conversation and diffing their lengths.

    For assistant message i:
      start = len(render(messages[:i], add_generation_prompt=True))   # after "<|im_start|>assistant\\n"
      end   = len(render(messages[:i+1]))                              # after "...<|im_end|>\\n"
    provided both renders are prefixes of `full`. Trailing whitespace of the span is then dropped
    (the "\\n" ChatML writes after <|im_end|> is formatting the model never generates), so the span
    is the turn's content, or its rendered tool calls, plus the end-of-turn token. If the template
    ignores `add_generation_prompt` (the Llama-2 template, for one) the role header would fall
    inside the span; then the span starts at the assistant content when the text before it in the
    span is more than whitespace. Characters are mapped to tokens with the fast tokenizer's offset
    mapping on the FULL text, so the ids are exactly those `apply_chat_template(tokenize=True)`
    gives; a token is trained on if it overlaps a span (as transformers does for
    `{% generation %}` masks).

    Limits: (1) it needs prefix-stable templates, i.e. rendering the first k messages gives a
    prefix of rendering all of them. Templates that rewrite earlier turns depending on what
    follows (Qwen3 drops the <think> part of earlier assistant turns; some templates only put
    tools or a date in the LAST user message) are not; for those a turn is located by searching
    its content in the full text, extended over the end-of-turn token that follows it, and a
    warning is added; a turn that cannot be found (e.g. a tool call the template reformats) is
    left out of the loss with a warning. (2) Each assistant turn costs two extra template renders
    (~0.2 ms each: about 1 ms for a 3-turn record on these CPUs). (3) Token boundaries come from
    tokenizing the full text: a token straddling a span edge (which well-formed templates avoid
    by ending headers with a newline or a special token) is trained on. (4) As with
    `apply_chat_template(tokenize=True)` by default, a control token written inside a message
    (a literal "<|im_end|>" in user text) is encoded as that special token.
    """
    full = render(messages, False) if full is None else full
    generation_prompt_works = _generation_prompt_changes_output(render, template_key)
    spans: list[tuple[int, int]] = []
    warnings: list[str] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i < loss_from:
            continue
        start = end = None
        before = render(messages[:i], True)
        if not full.startswith(before):
            before = render(messages[:i], False)
        through = render(messages[: i + 1], False)
        if full.startswith(before) and full.startswith(through) and len(through) >= len(before):
            start, end = len(before), len(through)
            content = message.get("content") or ""
            if not generation_prompt_works and content:
                found = full.find(content, start, end)
                if found > start and full[start:found].strip():
                    start = found
            end = start + len(full[start:end].rstrip())
        else:
            located = _search_turn(full, message, cursor, tokenizer)
            if located is None:
                warnings.append(f"message {i} (assistant): the template is not prefix-stable and the turn "
                                "could not be located; it carries no loss")
                continue
            warnings.append(f"message {i} (assistant): the template is not prefix-stable; the turn was "
                            "located by searching its content")
            start, end = located
        if end > start:
            spans.append((start, end))
            cursor = end
    return spans, warnings


_GENERATION_PROMPT_CACHE: dict[str, bool] = {}


def _generation_prompt_changes_output(render, template_key: str | None) -> bool:
    key = template_key or ""
    if key not in _GENERATION_PROMPT_CACHE:
        probe = [{"role": "user", "content": "probe"}]
        try:
            _GENERATION_PROMPT_CACHE[key] = render(probe, True) != render(probe, False)
        except Exception:  # a template that refuses the probe: assume the usual case
            return True
    return _GENERATION_PROMPT_CACHE[key]


def _search_turn(full: str, message: dict, cursor: int, tokenizer) -> tuple[int, int] | None:
    content = (message.get("content") or "").strip()
    if not content:
        return None
    start = full.find(content, cursor)
    if start < 0:
        return None
    end = start + len(content)
    pattern = _special_tokens_pattern(tokenizer)
    if pattern is not None:
        follow = pattern.match(full, end)
        if follow:
            end = follow.end()
    return start, end


def _special_tokens_pattern(tokenizer):
    tokens = set(getattr(tokenizer, "all_special_tokens", []) or [])
    tokens.update(str(t) for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values())
    tokens.discard("")
    if not tokens:
        return None
    alternatives = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    return re.compile(rf"\s*(?:{alternatives})")


# ---------------------------------------------------------------------------------------------
# helpers


def _render_text(record: dict, tokenizer, *, max_length: int | None) -> Rendered:
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError("a text record needs a string 'text' field")
    ids, offsets, synthetic = encode_text(tokenizer, text)
    flags = [True] * len(ids)
    return _assemble(tokenizer, text, ids, offsets, synthetic, flags, max_length, [])


def encode_text(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]], list[bool]]:
    """ids of a pretraining document: the tokenizer's own special tokens (BOS where it adds one)
    + text + EOS; offsets into `text`; which tokens are not in the text (synthetic)."""
    encoded = tokenizer(text, add_special_tokens=True, return_special_tokens_mask=True,
                        return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)))
    ids = list(encoded["input_ids"])
    synthetic = [bool(x) for x in encoded["special_tokens_mask"]]
    if "offset_mapping" in encoded:
        offsets = [tuple(o) for o in encoded["offset_mapping"]]
    else:
        offsets = [(0, len(text))] * len(ids)
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        offsets.append((len(text), len(text)))
        synthetic.append(True)
    return ids, offsets, synthetic


def _encode_with_offsets(tokenizer, text: str, spans: list[tuple[int, int]]):
    """ids of `text` (no special tokens added: the template writes them) and character offsets.
    A tokenizer without offsets (a slow one) encodes the pieces between span edges separately."""
    if getattr(tokenizer, "is_fast", False):
        try:
            encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            return list(encoded["input_ids"]), [tuple(o) for o in encoded["offset_mapping"]]
        except NotImplementedError:
            pass
    edges = sorted({0, len(text), *(p for span in spans for p in span)})
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for a, b in zip(edges, edges[1:]):
        piece_ids = tokenizer(text[a:b], add_special_tokens=False)["input_ids"]
        ids += piece_ids
        offsets += [(a, b)] * len(piece_ids)
    return ids, offsets


def _flags_from_spans(offsets, spans) -> list[bool]:
    """A token is trained on if its characters overlap a span (both lists are in order)."""
    flags = [False] * len(offsets)
    k = 0
    for t, (a, b) in enumerate(offsets):
        while k < len(spans) and spans[k][1] <= a:
            k += 1
        if k == len(spans):
            break
        s, e = spans[k]
        flags[t] = (a < e and b > s) if b > a else s <= a < e
    return flags


def _assemble(tokenizer, text, ids, offsets, synthetic, flags, max_length, warnings) -> Rendered:
    truncated = max_length is not None and len(ids) > max_length
    n = max_length if truncated else len(ids)
    ids = list(ids[:n])
    labels = [tid if flag else IGNORE_INDEX for tid, flag in zip(ids, flags)]
    # segments: walk the tokens, giving each the text from the cursor to its end offset
    segments: list[dict] = []
    cursor = 0
    for t in range(n):
        a, b = offsets[t]
        if synthetic[t]:
            piece = tokenizer.convert_ids_to_tokens(ids[t])
        elif b > cursor:
            piece, cursor = text[cursor:b], b
        else:
            piece = ""
        if not piece:
            continue
        if segments and segments[-1]["loss"] == flags[t]:
            segments[-1]["text"] += piece
        else:
            segments.append({"text": piece, "loss": bool(flags[t])})
    if not truncated and cursor < len(text):  # text no token covers (none for byte-level tokenizers)
        tail = text[cursor:]
        if segments and not segments[-1]["loss"]:
            segments[-1]["text"] += tail
        else:
            segments.append({"text": tail, "loss": False})
    return Rendered(input_ids=ids, labels=labels, text="".join(s["text"] for s in segments),
                    segments=segments, truncated=truncated, warnings=list(warnings))


def _resolve_template(tokenizer, chat_template: str | None, tools) -> str:
    if chat_template:
        return chat_template
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template: pass chat_template=... to render chat records")
    return tokenizer.get_chat_template(None, tools)


def _require_messages(record: dict, key: str, need_assistant: bool = True) -> list[dict]:
    messages = record.get(key)
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"the record needs a non-empty list {key!r}")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"{key!r}: every message needs a role of system/user/assistant/tool, got {m!r}")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{key!r} has no assistant turn")
    return messages


def _template_message(message: dict) -> dict:
    """A canonical message as chat templates expect it: content always a string, tool-call
    arguments as a dict (the transformers convention; templates apply `| tojson` to them)."""
    out = {k: v for k, v in message.items() if k != "meta"}
    if out.get("content") is None:
        out["content"] = ""
    calls = out.get("tool_calls")
    if calls:
        fixed = []
        for call in calls:
            call = dict(call)
            function = dict(call.get("function") or {})
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                try:
                    function["arguments"] = json.loads(arguments)
                except ValueError:
                    pass
            call["function"] = function
            fixed.append(call)
        out["tool_calls"] = fixed
    else:
        out.pop("tool_calls", None)
    return out
