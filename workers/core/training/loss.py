"""The causal-LM loss of the training path (pretrain, cpt, sft): logits only for the positions that
carry loss, and never all of them at once.

The plain path, `model(..., labels=...)`, projects EVERY position onto the vocabulary: B x L x V
fp32 logits (SmolLM2, V = 49,152: 192 KiB per token, 1.6 GB for 8 x 1,024 tokens), then keeps
their log-softmax and their gradient, of the same size, for the backward. Most of those positions
carry no loss in SFT (prompt tokens, each sample's first token, a pack's free tail).

Here the model's forward still runs through whatever wraps it (peft, DDP), but its LM head gets
no rows: a forward pre-hook on the head takes the final hidden states and hands the head an empty
slice. The hidden states of the positions whose shifted label is not -100 then go, with the head's
weight, to torch's chunked `torch.nn.functional.linear_cross_entropy` (torch 2.13): it computes
the loss and the gradients of the hidden states (and of the head's weight when it trains) chunk by
chunk of rows inside its forward, so at most CHUNK_BYTES of logits exist at a time. The loss and
the gradients equal the plain path's within float rounding
(tests/core/training/test_training_loss.py).

The Trainer drives it as its `compute_loss_func` (the Trainer pops the labels, passes
`num_items_in_batch` across gradient accumulation and rescales for several processes as for the
plain path); `PuyuTrainer.compute_loss` arms the hook around each forward.

The plain path stays where the head is not a plain nn.Linear (a LoRA on lm_head, a quantized head),
under FSDP (the head's weight is sharded outside the forward), and on a torch without
linear_cross_entropy (GPU workers may run an older stack): `head_loss_for` says why.
"""
from __future__ import annotations

import contextlib
import os

IGNORE_INDEX = -100
# Logits of one chunk, in bytes: 64 MiB is 341 rows of a 49k vocabulary. Measured on SmolLM2's
# head (576 x 49,152, fp32) on the 2-core CPU: chunks of 128-1,024 rows run as fast as the plain
# projection (the per-chunk matmul is still large); smaller chunks re-read the 113 MB weight more
# often than they save (torch's default "aspect_ratio:2" picks 4 rows here).
CHUNK_BYTES = 64 * 2**20


def head_loss_for(model, spec) -> tuple[HeadLoss | None, str]:
    """(the loss for `model`'s LM head, "") or (None, why the plain path stays)."""
    import torch

    if not hasattr(torch.nn.functional, "linear_cross_entropy"):
        return None, f"torch {torch.__version__} has no linear_cross_entropy"
    if spec.distributed == "fsdp" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None, "FSDP shards the LM head's weight outside the forward"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        return None, f"the LM head is a {type(head).__name__} (a LoRA or a quantized layer), not a plain Linear"
    return HeadLoss(head), ""


class HeadLoss:
    """The Trainer's compute_loss_func for a causal LM whose head is `head` (see the module doc)."""

    def __init__(self, head, chunk_bytes: int = CHUNK_BYTES):
        self.head = head
        self.chunk_rows = max(1, chunk_bytes // (4 * head.out_features))
        self.armed = False
        self.hidden = None
        head.register_forward_pre_hook(self._take_hidden)

    def _take_hidden(self, module, args):
        if not self.armed:
            return None  # generation (sample callback) and anything outside compute_loss: the plain head
        if not args:
            raise RuntimeError(f"{type(module).__name__} was called without a positional input: the training "
                               "loss cannot take its hidden states")
        self.hidden = args[0]
        return (args[0][..., :0, :], *args[1:])  # the head projects nothing

    @contextlib.contextmanager
    def capturing(self):
        """Around one forward + loss: the head's input is taken, not projected."""
        self.armed, self.hidden = True, None
        try:
            yield
        finally:
            self.armed, self.hidden = False, None

    def __call__(self, outputs, labels, num_items_in_batch=None):
        import torch
        import torch.nn.functional as F

        hidden = self.hidden
        if hidden is None:
            raise RuntimeError("the training loss found no hidden states: the forward ran outside "
                               "HeadLoss.capturing() or the model never called its LM head")
        self.hidden = None
        # Position t predicts token t+1 (the plain path pads the labels by one and shifts them).
        targets = F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX).to(hidden.device)
        keep = targets != IGNORE_INDEX
        if not bool(keep.any()):
            return hidden.sum() * 0.0  # nothing to learn from: a zero that keeps the graph (DDP wants every grad)
        kept = hidden[keep]
        weight, bias = self.head.weight, self.head.bias
        if kept.dtype != weight.dtype:
            kept = kept.to(weight.dtype)  # as nn.Linear would need (bf16 base, fp32 norm output)
        total = F.linear_cross_entropy(
            kept, weight, targets[keep], linear_bias=bias, reduction="sum",
            options=torch.nn.LinearCrossEntropyOptions(batch_chunk_size=self.chunk_rows, chunking_method=None))
        if num_items_in_batch is None:  # a per-batch mean, as the plain path without accumulation
            return total / kept.shape[0]
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(total.device)
        return total / num_items_in_batch
