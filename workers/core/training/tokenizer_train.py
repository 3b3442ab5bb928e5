"""Train a byte-level BPE tokenizer on the pretraining text with the `tokenizers` library and save
it as a transformers fast tokenizer (with ChatML special tokens and template, so the pretrained
model can later be fine-tuned on chat data without adding tokens)."""
from __future__ import annotations

from pathlib import Path
from collections.abc import Iterable

from workers.core.training.templates import CHAT_TEMPLATES

BOS, EOS, PAD, IM_START = "<|endoftext|>", "<|im_end|>", "<|pad|>", "<|im_start|>"


def train_bpe_tokenizer(texts: Iterable[str], out_dir: Path, *, vocab_size: int = 8000,
                        model_max_length: int = 4096) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, IM_START, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                      additional_special_tokens=[IM_START], chat_template=CHAT_TEMPLATES["chatml"],
                                      model_max_length=model_max_length)
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(partial)
    partial.rename(out_dir)
    return out_dir
