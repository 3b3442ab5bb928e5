"""The exclusive lane: requests the continuous batching manager cannot serve exactly (a seed, or a
repetition penalty: both are global to the manager in transformers 5.24) run one at a time with
`generate` on a second copy of the model.

Why a copy and not `manager.pause()`: the manager switches the model to paged attention and
`generate` on the same model corrupts `config.is_causal` for later calls (verified); a copy made
before the manager exists is untouched. It costs the model's memory once more, which is why
EngineConfig.exclusive_lane can be "off" (such requests are then refused with a clear 400).

A seed is honoured with a private torch.Generator (the manager's thread shares the global RNG,
so `torch.manual_seed` would not reproduce): the last logits processor samples with it and
leaves only the chosen token, and `generate` runs greedy on top."""
from __future__ import annotations

import queue
import threading


def build_processors(sampling, generator):
    import torch
    from transformers import LogitsProcessor

    from .sampling import logits_processors

    class SeededSampler(LogitsProcessor):
        def __call__(self, input_ids, scores):
            probs = torch.softmax(scores.float(), dim=-1)
            chosen = torch.multinomial(probs, num_samples=1, generator=generator)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(-1, chosen, 0.0)

    processors = logits_processors(sampling)
    if not sampling.greedy:
        processors.append(SeededSampler())
    return processors


class ExclusiveLane:
    """One thread running `generate` on a model copy; `on_tokens(handle, tokens, finished)` and
    `on_error(handle, error)` are called from that thread (the engine forwards them to its loop)."""

    def __init__(self, model, eos_ids, pad_id, on_tokens, on_error) -> None:
        self.model = model
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.on_tokens = on_tokens
        self.on_error = on_error
        self.queue: queue.Queue = queue.Queue()
        self.busy = False
        self.thread = threading.Thread(target=self._run, name="exclusive-lane", daemon=True)
        self.thread.start()

    @property
    def waiting(self) -> int:
        return self.queue.qsize()

    def submit(self, handle, max_new_tokens: int) -> None:
        self.queue.put((handle, max_new_tokens))

    def close(self) -> None:
        self.queue.put(None)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            handle, max_new_tokens = item
            if handle.closed:
                continue
            self.busy = True
            try:
                self._generate(handle, max_new_tokens)
            except Exception as error:  # reported on the request; the lane keeps serving
                self.on_error(handle, error)
            finally:
                self.busy = False

    def _generate(self, handle, max_new_tokens: int) -> None:
        import torch
        from transformers import (
            GenerationConfig,
            StoppingCriteria,
            StoppingCriteriaList,
        )
        from transformers.generation.streamers import BaseStreamer

        lane = self
        generated: list[int] = []

        class Streamer(BaseStreamer):
            def __init__(self):
                self.prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # generate first puts the prompt
                    self.prompt_seen = True
                    return
                generated.extend(int(t) for t in value.reshape(-1).tolist())
                lane.on_tokens(handle, list(generated), False)

            def end(self):
                pass

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), handle.closed, dtype=torch.bool, device=input_ids.device)

        generator = torch.Generator(device=self.model.device)
        generator.manual_seed(handle.sampling.seed if handle.sampling.seed is not None else torch.seed())
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.eos_ids, pad_token_id=self.pad_id
        )
        input_ids = torch.tensor([handle.prompt_ids], device=self.model.device)
        with torch.inference_mode():
            self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                generation_config=config,
                logits_processor=build_processors(handle.sampling, generator),
                stopping_criteria=StoppingCriteriaList([Cancelled()]),
                streamer=Streamer(),
            )
        self.on_tokens(handle, list(generated), True)
