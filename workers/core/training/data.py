"""Training data: read the canonical JSONL of dataset versions, check their format against the
method, split off a held-out set, render records into (input_ids, labels) with the loss masks of
data/tokenize.py, and batch them packed (padding-free) or padded.

Packed batches carry input_ids, labels and position_ids (restarting at every sample) and NO
attention_mask: transformers 5.24 then builds the block-diagonal causal mask itself, but only
when the forward also runs with use_cache=False (the recipes set model.config.use_cache=False).
Both traps are covered by tests/core/training/test_packing_exact.py.

Every batch also carries "real_tokens" (non-pad tokens), which the trainer pops before the
forward to report tokens/s.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from workers.core.data.packing import pack
from workers.core.data.tokenize import IGNORE_INDEX, render_record
from workers.core.specs import SpecError
from workers.core.training.spec import METHOD_FORMATS

CANONICAL_KEYS = (  # (format, keys a record of it has), in sniffing order
    ("preference", ("prompt", "chosen", "rejected")),
    ("chat", ("messages",)),
    ("qa", ("question", "answer")),
    ("multiple_choice", ("question", "choices")),
    ("code", ("task_id", "prompt")),
    ("text", ("text",)),
)


def sniff_record(record: dict) -> str | None:
    for fmt, keys in CANONICAL_KEYS:
        if all(k in record for k in keys):
            return fmt
    return None


def read_records(paths: list[str], field: str = "train_files", limit: int | None = None) -> list[dict]:
    """Canonical records of the files in order; a bad line is a SpecError naming file and line."""
    records: list[dict] = []
    for i, path in enumerate(paths):
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"{field}[{i}]", f"{path} does not exist")
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise SpecError(f"{field}[{i}]", f"{path.name} line {line_no}: not valid JSON ({exc})") from None
                if not isinstance(record, dict):
                    raise SpecError(f"{field}[{i}]", f"{path.name} line {line_no}: a record must be a JSON object")
                record.setdefault("meta", {}).setdefault("line", line_no)
                records.append(record)
                if limit is not None and len(records) >= limit:
                    return records
    if not records:
        raise SpecError(field, "the dataset files hold no record")
    return records


def resolve_format(method: str, declared: str, first: dict, field: str = "train_files") -> str:
    """The canonical format of the data, checked against what `method` trains on."""
    fmt = declared or sniff_record(first)
    if fmt is None:
        raise SpecError(field, f"cannot tell the format of the first record (fields: {', '.join(sorted(first))}); "
                               "expected text {text}, chat {messages}, qa {question, answer} or preference "
                               "{prompt, chosen, rejected}")
    allowed = METHOD_FORMATS[method]
    if fmt not in allowed:
        need = {"text": "text records with a 'text' field", "chat": "chat records with 'messages'",
                "qa": "qa records with 'question' and 'answer'",
                "preference": "preference records with 'prompt', 'chosen' and 'rejected'"}
        raise SpecError(field, f"{method} needs {' or '.join(need[a] for a in allowed)}; this dataset is {fmt!r}")
    return fmt


def split_eval(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A deterministic held-out split (by seed): at least one eval record when fraction > 0 and
    there are two records or more."""
    if fraction <= 0 or len(records) < 2:
        return records, []
    n_eval = min(len(records) - 1, max(1, round(len(records) * fraction)))
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def render_samples(records: list[dict], fmt: str, tokenizer, max_length: int,
                   chat_template: str | None) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per sample. Text documents longer than max_length become several
    chunks (continued pretraining loses no text); chat/qa records are rendered with loss on the
    assistant turns only and truncated; a sample without any loss token is dropped."""
    samples: list[tuple[list[int], list[int]]] = []
    if fmt == "text":
        eos = tokenizer.eos_token_id
        texts = [r.get("text") for r in records]
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise SpecError("train_files", f"record {i + 1}: a text record needs a string 'text' field")
        for start in range(0, len(texts), 256):
            for ids in tokenizer(texts[start:start + 256], add_special_tokens=True)["input_ids"]:
                ids = list(ids)
                if eos is not None and (not ids or ids[-1] != eos):
                    ids.append(eos)
                for s in range(0, len(ids), max_length):
                    chunk = ids[s:s + max_length]
                    if len(chunk) >= 2:
                        samples.append((chunk, chunk))
        return samples
    for record in records:
        rendered = render_record(record, fmt, tokenizer, chat_template=chat_template, max_length=max_length)
        if any(label != IGNORE_INDEX for label in rendered.labels[1:]):
            samples.append((rendered.input_ids, rendered.labels))
    return samples


class PackedDataset:
    """Samples packed best-fit-decreasing into max_length sequences (data/packing.pack)."""

    def __init__(self, samples, max_length: int, pad_id: int):
        self.stats: dict = {}
        self.packs = pack(samples, max_length, pad_id=pad_id, stats=self.stats)

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, i: int) -> dict:
        return self.packs[i]


class PaddedDataset:
    """One sample per row; the collator pads a batch to its longest sample."""

    def __init__(self, samples):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        ids, labels = self.samples[i]
        return {"input_ids": ids, "labels": labels}


def collate_packed(features: list[dict]) -> dict:
    import torch

    batch = {key: torch.tensor([f[key] for f in features], dtype=torch.long)
             for key in ("input_ids", "labels", "position_ids")}
    batch["real_tokens"] = torch.tensor(sum(sum(f["seq_lens"]) for f in features))
    return batch


class PaddedCollator:
    """Right-padding to the longest sample of the batch, with an attention_mask; pad labels -100."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.tensor(f["input_ids"])
            labels[row, :n] = torch.tensor(f["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask, "real_tokens": mask.sum()}


def build_lm_datasets(samples, eval_samples, *, packing: bool, max_length: int, pad_id: int):
    """(train dataset, eval dataset or None, collator, stats)."""
    if packing:
        train = PackedDataset(samples, max_length, pad_id)
        evalset = PackedDataset(eval_samples, max_length, pad_id) if eval_samples else None
        return train, evalset, collate_packed, dict(train.stats)
    tokens = sum(len(s[0]) for s in samples)
    stats = {"samples": len(samples), "tokens": tokens,
             "loss_tokens": sum(1 for _, lab in samples for x in lab[1:] if x != IGNORE_INDEX)}
    return (PaddedDataset(samples), PaddedDataset(eval_samples) if eval_samples else None,
            PaddedCollator(pad_id), stats)


def preference_rows(records: list[dict]) -> list[dict]:
    """Conversational prompt/chosen/rejected rows as TRL's DPOTrainer takes them."""
    rows = []
    for record in records:
        row = {}
        for key in ("prompt", "chosen", "rejected"):
            row[key] = [{"role": m["role"], "content": m.get("content") or ""} for m in record[key]]
        rows.append(row)
    return rows
