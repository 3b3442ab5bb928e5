"""Padding-free packing of rendered samples into fixed-length sequences, and the cached
tokenize + pack step a training job runs on a dataset version.

Packing (`pack`): best-fit decreasing (TRL's default "bfd" strategy), a greedy bin packing that
never cuts a sample in two: samples are taken longest first and each goes into the pack whose
free space fits it most tightly, or opens a new pack. Every pack is `seq_len` long:

    input_ids     the samples back to back, then pad_id over the free tail
    labels        the samples' labels, with the FIRST label of every sample set to -100 (as
                  transformers' DataCollatorWithFlattening does): a causal LM shifts labels by
                  one, so the last token of one sample must not be trained to predict the first
                  token of the next; per sample nothing changes (a first token is never a
                  target). The free tail is -100.
    position_ids  0, 1, 2, … restarting at every sample (and at the free tail), so attention can
                  be kept within samples: transformers (5.24) builds the block-diagonal causal
                  mask itself from restarting position_ids (masking_utils.
                  find_packed_sequence_indices; sdpa, eager and flash) but ONLY when the forward
                  gets no attention_mask AND no cache, so the trainer must call the model with
                  use_cache=False (with the default use_cache=True Llama creates a DynamicCache
                  and silently attends across samples: verified, tests/core/data/
                  test_tokenize_packing.py). flash-attention varlen kernels take the same
                  boundaries as cu_seqlens.
    seq_lens      the length of each sample in the pack; seq_len - sum(seq_lens) is padding.

Choice on padding: a pack's free tail is padded, never dropped. Best-fit decreasing leaves
little free space (typically well under 1% of the tokens when samples are much shorter than
seq_len; `stats["fill"]` reports it) and keeps every sample whole, so the loss of a packed
sample equals its loss alone (tests check this on a tiny Llama). Samples longer than seq_len are
truncated to seq_len (counted in stats["truncated"]); `tokenize_and_pack` instead splits long
pretraining documents into seq_len chunks, so continued pretraining loses no text.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable

from workers.core.data.tokenize import IGNORE_INDEX, Rendered, render_record
from workers.core.reporting import check_cancelled

CODE_VERSION = "tokenize-pack/1"  # bump whenever rendering or packing output changes
MANIFEST = "manifest.json"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt",
)
ARRAYS = ("input_ids", "labels", "position_ids", "seq_lens", "pack_offsets", "sample_index")


# ---------------------------------------------------------------------------------------------
# packing


def plan_packs(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Best-fit decreasing: the sample indices of each pack (in original order within a pack).
    Every length must be 1..seq_len. O(n log n) plus list insertions."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    members: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (free space, pack index) of packs with space left
    for i in order:
        length = lengths[i]
        if not 1 <= length <= seq_len:
            raise ValueError(f"sample {i} has length {length}, outside 1..{seq_len}")
        k = bisect.bisect_left(free, (length, -1))
        if k == len(free):
            members.append([i])
            space, p = seq_len - length, len(members) - 1
        else:
            space, p = free.pop(k)
            members[p].append(i)
            space -= length
        if space > 0:
            bisect.insort(free, (space, p))
    return [sorted(m) for m in members]


def _as_pair(example) -> tuple[list[int], list[int]]:
    if isinstance(example, Rendered):
        return example.input_ids, example.labels
    ids, labels = example
    return list(ids), list(labels)


def pack(
    examples: Iterable[Rendered | tuple[list[int], list[int]]],
    seq_len: int,
    *,
    pad_id: int = 0,
    stats: dict | None = None,
) -> list[dict]:
    """Pack samples into `seq_len`-long sequences (module docstring). Empty samples are skipped;
    longer ones are truncated. If `stats` is a dict it receives samples, packs, tokens,
    loss_tokens, truncated, padding_tokens and fill."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be at least 1, got {seq_len}")
    samples: list[tuple[list[int], list[int]]] = []
    truncated = 0
    for example in examples:
        ids, labels = _as_pair(example)
        if len(ids) != len(labels):
            raise ValueError(f"input_ids and labels differ in length ({len(ids)} != {len(labels)})")
        if not ids:
            continue
        if len(ids) > seq_len:
            ids, labels = ids[:seq_len], labels[:seq_len]
            truncated += 1
        samples.append((ids, labels))
    plan = plan_packs([len(s[0]) for s in samples], seq_len)
    packs = []
    loss_tokens = 0
    for members in plan:
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        seq_lens: list[int] = []
        for i in members:
            ids, sample_labels = samples[i]
            input_ids += ids
            labels += [IGNORE_INDEX] + sample_labels[1:]
            position_ids += range(len(ids))
            seq_lens.append(len(ids))
        gap = seq_len - len(input_ids)
        input_ids += [pad_id] * gap
        labels += [IGNORE_INDEX] * gap
        position_ids += range(gap)
        loss_tokens += sum(1 for x in labels if x != IGNORE_INDEX)
        packs.append({"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "seq_lens": seq_lens})
    if stats is not None:
        tokens = sum(len(s[0]) for s in samples)
        stats.update(samples=len(samples), packs=len(packs), tokens=tokens, loss_tokens=loss_tokens,
                     truncated=truncated, padding_tokens=len(packs) * seq_len - tokens,
                     fill=round(tokens / (len(packs) * seq_len), 4) if packs else 0.0)
    return packs


# ---------------------------------------------------------------------------------------------
# the cached tokenize + pack step


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer_dir: Path) -> str:
    """sha256 over the tokenizer's files (names and bytes) that change its output."""
    digest = hashlib.sha256()
    found = 0
    for name in TOKENIZER_FILES:
        path = Path(tokenizer_dir) / name
        if path.is_file():
            found += 1
            digest.update(name.encode() + b"\0" + sha256_file(path).encode() + b"\0")
    if not found:
        raise FileNotFoundError(f"no tokenizer files in {tokenizer_dir}")
    return digest.hexdigest()


def cache_key(version_sha256: str, tokenizer_sha256: str, chat_template: str | None, seq_len: int,
              canonical: str) -> str:
    material = json.dumps({
        "version": version_sha256, "tokenizer": tokenizer_sha256, "chat_template": chat_template,
        "seq_len": seq_len, "canonical": canonical, "code": CODE_VERSION,
    }, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def load_packed(folder: Path, mmap: bool = True) -> dict:
    """The arrays of a tokenize_and_pack folder (memory-mapped by default) and its manifest."""
    import numpy as np

    folder = Path(folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r" if mmap else None) for name in ARRAYS}
    return {"manifest": manifest, **arrays}


def _valid_cache(folder: Path) -> dict | None:
    """The manifest of a complete cache folder, or None (missing, half-written or damaged)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        for name, size in manifest["files"].items():
            if (folder / name).stat().st_size != size:
                return None
        return manifest
    except (OSError, ValueError, KeyError, TypeError):
        return None


def tokenize_and_pack(
    version_path: Path,
    canonical: str,
    tokenizer_dir: Path,
    *,
    seq_len: int,
    chat_template: str | None,
    cache_dir: Path,
    reporter=None,
) -> tuple[Path, dict]:
    """Render every record of a dataset version (JSONL of canonical records), pack them into
    `seq_len` sequences and store them as .npy files under cache_dir/<key>/, where key = sha256 of
    (version file sha256, tokenizer files hash, chat_template, seq_len, canonical, CODE_VERSION).

    The folder is built under a temporary name, its manifest.json written last, then renamed
    into place: a folder without a valid manifest (a crash mid-write) is ignored and rebuilt, and
    a hit returns at once. Returns (folder, stats) with stats samples, packs, tokens, loss_tokens,
    truncated, cache_hit (+ split_documents, skipped_no_loss, padding_tokens, fill, seconds).

    Files: input_ids/labels/position_ids int32 [packs, seq_len]; seq_lens int32 and sample_index
    int64 (the record's line number, 0-based among non-blank lines) per packed sample, in pack
    order; pack_offsets int64 [packs + 1] (pack p holds samples pack_offsets[p]:pack_offsets[p+1])."""
    import numpy as np

    started = time.perf_counter()
    version_path, tokenizer_dir, cache_dir = Path(version_path), Path(tokenizer_dir), Path(cache_dir)
    if canonical not in ("text", "chat", "qa", "preference"):
        raise ValueError(f"cannot tokenize canonical format {canonical!r} for training "
                         "(text, chat, qa or preference)")
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    version_sha = sha256_file(version_path)
    tokenizer_sha = tokenizer_fingerprint(tokenizer_dir)
    key = cache_key(version_sha, tokenizer_sha, chat_template, seq_len, canonical)
    folder = cache_dir / key
    manifest = _valid_cache(folder)
    if manifest is not None:
        stats = dict(manifest["stats"], cache_hit=True, seconds=round(time.perf_counter() - started, 4))
        if reporter is not None:
            reporter.log(f"tokenized data found in cache {key[:12]}: {stats['packs']} packs of {seq_len}")
            reporter.progress(1.0, "tokenized (cache hit)")
        return folder, stats

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True, trust_remote_code=False)
    tokenizer.model_max_length = 1 << 40  # lengths are handled here; silence "sequence longer than" warnings
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    if reporter is not None:
        reporter.log(f"tokenizing {version_path.name} ({canonical}) into packs of {seq_len} tokens")

    samples: list[tuple[list[int], list[int]]] = []
    origin: list[int] = []
    counts = {"truncated": 0, "split_documents": 0, "skipped_no_loss": 0}
    total_bytes = max(1, version_path.stat().st_size)
    seen_bytes = 0
    last_report = 0.0
    batch: list[tuple[int, dict]] = []

    def flush() -> None:
        if canonical == "text":
            _add_text_batch(tokenizer, batch, seq_len, samples, origin, counts)
        else:
            for index, record in batch:
                rendered = render_record(record, canonical, tokenizer, chat_template=chat_template, max_length=seq_len)
                counts["truncated"] += rendered.truncated
                if not any(label != IGNORE_INDEX for label in rendered.labels[1:]):
                    counts["skipped_no_loss"] += 1
                    continue
                samples.append((rendered.input_ids, rendered.labels))
                origin.append(index)
        batch.clear()

    with open(version_path, "rb") as f:
        index = 0
        for raw in f:
            seen_bytes += len(raw)
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError as exc:
                raise ValueError(f"{version_path.name}: record {index + 1} is not valid JSON: {exc}") from None
            batch.append((index, record))
            index += 1
            if len(batch) >= 512:
                flush()
                if reporter is not None:
                    check_cancelled(reporter)
                    fraction = 0.9 * seen_bytes / total_bytes
                    if fraction - last_report >= 0.05:
                        last_report = fraction
                        reporter.progress(fraction, f"tokenized {index} records")
        flush()

    plan = plan_packs([len(ids) for ids, _ in samples], seq_len)
    n_packs = len(plan)
    input_ids = np.full((n_packs, seq_len), pad_id, dtype=np.int32)
    labels = np.full((n_packs, seq_len), IGNORE_INDEX, dtype=np.int32)
    position_ids = np.zeros((n_packs, seq_len), dtype=np.int32)
    seq_lens = np.zeros(len(samples), dtype=np.int32)
    sample_index = np.zeros(len(samples), dtype=np.int64)
    pack_offsets = np.zeros(n_packs + 1, dtype=np.int64)
    arange = np.arange(seq_len, dtype=np.int32)
    slot = 0
    for p, members in enumerate(plan):
        cursor = 0
        for i in members:
            ids, sample_labels = samples[i]
            n = len(ids)
            input_ids[p, cursor:cursor + n] = ids
            labels[p, cursor + 1:cursor + n] = sample_labels[1:]
            position_ids[p, cursor:cursor + n] = arange[:n]
            seq_lens[slot], sample_index[slot] = n, origin[i]
            slot += 1
            cursor += n
        position_ids[p, cursor:] = arange[: seq_len - cursor]
        pack_offsets[p + 1] = slot
    tokens = int(seq_lens.sum())
    stats = {
        "samples": len(samples), "packs": n_packs, "tokens": tokens,
        "loss_tokens": int((labels != IGNORE_INDEX).sum()), **counts,
        "padding_tokens": n_packs * seq_len - tokens,
        "fill": round(tokens / (n_packs * seq_len), 4) if n_packs else 0.0,
    }
    if reporter is not None:
        check_cancelled(reporter)
        reporter.progress(0.95, f"packed {len(samples)} samples into {n_packs} packs")

    arrays = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "seq_lens": seq_lens,
              "pack_offsets": pack_offsets, "sample_index": sample_index}
    folder = _write_cache(cache_dir, key, arrays, {
        "format": "puyu.packed", "code_version": CODE_VERSION, "key": key, "canonical": canonical,
        "seq_len": seq_len, "pad_id": int(pad_id), "ignore_index": IGNORE_INDEX,
        "version_sha256": version_sha, "tokenizer_sha256": tokenizer_sha, "chat_template": chat_template,
        "source": str(version_path), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stats": stats,
    })
    stats = dict(stats, cache_hit=False, seconds=round(time.perf_counter() - started, 4))
    if reporter is not None:
        reporter.log(f"packed {stats['samples']} samples ({stats['tokens']} tokens, {stats['loss_tokens']} with "
                     f"loss) into {n_packs} packs, fill {stats['fill']:.1%}; truncated {stats['truncated']}")
        reporter.progress(1.0, "tokenized")
    return folder, stats


def _add_text_batch(tokenizer, batch, seq_len, samples, origin, counts) -> None:
    """Pretraining documents, batch-encoded; a document longer than seq_len becomes several
    seq_len chunks (each its own sample) rather than losing its tail."""
    texts = []
    for index, record in batch:
        if not isinstance(record.get("text"), str):
            raise ValueError(f"record {index + 1}: a text record needs a string 'text' field")
        texts.append(record["text"])
    if not texts:
        return
    encoded = tokenizer(texts, add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    for (index, _), ids in zip(batch, encoded):
        ids = list(ids)
        if eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        if len(ids) < 2:
            counts["skipped_no_loss"] += 1
            continue
        if len(ids) > seq_len:
            counts["split_documents"] += 1
        for start in range(0, len(ids), seq_len):
            chunk = ids[start:start + seq_len]
            if len(chunk) < 2:  # a lone token has nothing to predict
                continue
            samples.append((chunk, chunk))
            origin.append(index)


def _write_cache(cache_dir: Path, key: str, arrays: dict, manifest: dict) -> Path:
    import numpy as np

    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / key
    for stale in cache_dir.glob(f".{key}.tmp-*"):  # left by a run killed mid-write, a day ago or more
        try:
            if time.time() - stale.stat().st_mtime > 86400:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass
    staging = cache_dir / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        files = {}
        for name, array in arrays.items():
            path = staging / f"{name}.npy"
            with open(path, "wb") as f:
                np.save(f, array)
                f.flush()
                os.fsync(f.fileno())
            files[path.name] = path.stat().st_size
        manifest = dict(manifest, files=files)
        with open(staging / MANIFEST, "w") as f:  # last: its presence marks a complete folder
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        if final.exists() and _valid_cache(final) is None:
            shutil.rmtree(final, ignore_errors=True)  # half-written by a crashed run: replace it
        try:
            os.rename(staging, final)
        except OSError:
            if _valid_cache(final) is None:  # not a concurrent writer that finished first
                raise
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final
