"""Answer extractors: from a model's generated text to the answer a scorer compares.

Every extractor returns a string, or None when the output holds no answer in that form (scored
wrong, and shown as "no answer" in the drill-down rather than as a guessed one).

Shared rules, each fixing a way OpenCompass's postprocessors (opencompass/utils/
text_postprocessors.py and the GSM8K one) mark right answers wrong (opencompass#1973, #1818,
#2343, #1933):
- Reasoning models' `<think>...</think>` is dropped and only the text after it is read (the
  letters and numbers inside the thinking are drafts; #1973 is DeepSeek-R1-Distill on MMLU). An
  unclosed `<think>` means the model ran out of tokens while thinking: no answer.
- Base models that ramble on into a new "Question:" / "Q:" / "问题：" block are cut there.
- Only the last `MAX_INPUT_CHARS` characters are read (answers are at the end), and runs of
  whitespace read as one space (two newlines at most), which bounds every pattern's work; a
  user's regex also has a match timeout.
- Text is NFKC-normalised: full-width digits, letters, colons ("答案：Ｃ", "１８") are ASCII.
- Numbers keep their thousands separators together ("$70,000" is 70000, not 000: #2343) and
  compare by value ("12.0" == "12", "$18.00" == "18").
- An explicit final-answer marker ("#### n", \\boxed{}, "The answer is", "答案是") wins over
  the last number, so "The answer is 18. That is 2 more than last week's 16." reads 18.
- Option letters need an answer marker or a standalone letter: OpenCompass's first-capital reads
  "The answer is B" as "T", and its letter cushion takes the first letter anywhere in the
  reasoning ("A good way to start..." is "A"); "Answer: Let's think" is not the letter L (#1933).

tests/fixtures/data/eval_outputs/outputs.jsonl holds one model output per rule, with what
OpenCompass extracts from it.
"""
from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import regex

from workers.core.specs import SpecError

MAX_INPUT_CHARS = 20_000  # of a model output read by any extractor (the tail is kept)
MAX_PATTERN_CHARS = 300  # of a user's regex
MAX_REGEX_INPUT_CHARS = 4_000  # a user's regex sees only this much of the tail
REGEX_TIMEOUT_S = 1.0  # per output, for a user's regex
MAX_NUMBER_CHARS = 100  # a "number" longer than this is not compared as a number
MAX_ANSWER_SENTENCE = 200  # characters after "The answer is" searched for the number
ALL_OPTIONS = "ABCDEFGHIJ"  # up to ten options (MMLU-Pro)


# --- shared preparation -------------------------------------------------------------------------

_THINK_END = re.compile(r"</think\s*>", re.IGNORECASE)
_THINK_START = re.compile(r"<think\s*>", re.IGNORECASE)
# A base model that keeps going writes the next few-shot question; its numbers are not answers.
_CONTINUATION = re.compile(r"\n\s*(?:Question|Q|问题)\s*[:：]", re.IGNORECASE)


def _after_thinking(text: str) -> tuple[str, bool]:
    """(the output's tail after its last </think>, whether it had one): a reasoning model's
    drafts are not its answer."""
    if not isinstance(text, str):
        raise TypeError("a model output must be a string")
    text = text[-MAX_INPUT_CHARS:]
    ends = list(_THINK_END.finditer(text))
    return (text[ends[-1].end():], True) if ends else (text, False)


def prepare(text: str) -> str:
    """The part of an output an extractor reads (see the module docstring)."""
    text, thought = _after_thinking(text)
    if not thought and _THINK_START.search(text):
        return ""  # still thinking when the output stopped: no final answer was given
    text = unicodedata.normalize("NFKC", text).replace("⁄", "/")  # NFKC makes ½ "1⁄2"
    # Whitespace runs become one space (two newlines at most between lines): the patterns
    # below then never meet a long run, where "\s*x?\s*" backtracks polynomially.
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    cut = _CONTINUATION.search(text)
    if cut and cut.start() > 0:
        text = text[:cut.start()]
    return text


# --- numbers ------------------------------------------------------------------------------------

# A number token: optional sign, digits with comma thousands groups or plain digits, optional
# decimals, optionally "/ denominator" (a fraction like 3/4 is one number, worth 0.75). Not
# preceded by a letter, digit or dot, so "x2", "v1.5" and the "5" of "3.5" are not numbers and
# "5-3" or "5 - 3" read 5 and 3 (a sign must touch its digits and follow no digit); units may
# follow ("200GB", "3rd"); CJK characters do not block ("共18个" has 18). A trailing
# sentence period is not a decimal point ("is 42." is 42). Percent and currency signs are
# dropped ("25%" is 25, "$12.50" is 12.5); exponents ("1e5") are not read.
_NUMBER = re.compile(
    r"(?<![0-9A-Za-z_.])"
    r"(?P<sign>[-−+]?)"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d)|\d+)?"
    r"(?P<frac>\.\d+)?"
    r"(?:\s?/\s?(?P<den>\d+)(?![\d.]))?"
)

_FRAC = re.compile(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}")


def _number_tokens(text: str) -> list[str]:
    out = []
    for m in _NUMBER.finditer(text):
        if not (m.group("int") or m.group("frac")):
            continue
        token = (m.group("sign").replace("−", "-") + (m.group("int") or "0").replace(",", "")
                 + (m.group("frac") or ""))
        if m.group("den"):
            token += "/" + m.group("den")
        out.append(token)
    return out


def normalize_number(value: str) -> str | None:
    """The canonical form of a number for comparison, or None when `value` is not one number:
    "12.0" -> "12", "1,234" -> "1234", "$18.00" -> "18", "-0.50" -> "-0.5", "3/4" -> "0.75",
    "1/3" -> "1/3" (exact: no float rounding), "25%" -> "25"."""
    if not isinstance(value, str):
        value = str(value)
    text = unicodedata.normalize("NFKC", value).strip()
    if not text or len(text) > MAX_NUMBER_CHARS:
        return None
    text = text.strip("$€£¥%").strip().rstrip(".")
    if text.startswith("+"):
        text = text[1:]
    tokens = _number_tokens(text)
    if len(tokens) != 1:
        return None
    # The whole value must be that one number (with its separators), not "12 apples".
    if re.sub(r"[\s,]", "", text).replace("−", "-") != tokens[0].replace(" ", ""):
        return None
    return _canonical(tokens[0])


def _canonical(token: str) -> str | None:
    if len(token) > MAX_NUMBER_CHARS:
        return None  # a 20,000-digit "answer" is not compared (nor converted: int limits)
    try:
        if "/" in token:
            num, den = token.split("/")
            if int(den) == 0:
                return None
            value = Fraction(Decimal(num)) / int(den)
        else:
            value = Fraction(Decimal(token))
    except (InvalidOperation, ValueError, ZeroDivisionError):
        return None
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1:
        return f"{value.numerator}/{value.denominator}"  # repeating decimal: keep it exact
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Whether two answers are the same number ("12.0" and "12", "1,234" and "1234")."""
    if a is None or b is None:
        return False
    na, nb = normalize_number(a), normalize_number(b)
    return na is not None and na == nb


def last_number(text: str) -> str | None:
    """The last number in the output, canonical (see `normalize_number`); LaTeX \\frac{3}{4}
    reads as 3/4."""
    tokens = _number_tokens(_FRAC.sub(r"\1/\2", prepare(text)))
    return _canonical(tokens[-1]) if tokens else None


# The number must follow the marks: "#### Step 1: ..." is a markdown heading, not an answer.
_HASHES = re.compile(r"####\s*(?=[-−+$]?\s*\.?\d)(.+)")


def gsm8k_answer(text: str) -> str | None:
    """The number after the last "#### " (GSM8K's reference format, which few-shot prompting
    teaches models), canonical. "#### $1,200." is 1200."""
    found = _HASHES.findall(prepare(text))
    for line in reversed(found):
        tokens = _number_tokens(line)
        if tokens:
            return _canonical(tokens[0])
    return None


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (or \\fbox{...}), nested braces balanced:
    "\\boxed{\\frac{1}{2}}" gives "\\frac{1}{2}". An unclosed box gives None. One pass over
    the text, so a thousand unclosed boxes cost no more than one."""
    text = prepare(text)
    opens = {m.end() - 1 for m in _BOXED.finditer(text)}  # the "{" of each box
    if not opens:
        return None
    stack: list[int] = []
    last = None
    for i, char in enumerate(text):
        if char == "{":
            stack.append(i)
        elif char == "}" and stack:
            start = stack.pop()
            if start in opens and (last is None or start > last[0]):
                last = (start, i)
    return text[last[0] + 1:last[1]].strip() if last else None


def _number_from_boxed(content: str) -> str | None:
    content = content.replace("\\!", "").replace("\\,", "").replace("{,}", ",")
    content = re.sub(r"\\text\{[^{}]*\}|\\(?:mathrm|mbox)\{[^{}]*\}|\\%|\^\\circ|\\\$", "", content)
    content = _FRAC.sub(r"\1/\2", content).strip().strip("$")
    return normalize_number(content)


# "The answer is 18", "Answer: 18", "Final answer: $18", "答案是 18", "答案：18"
_ANSWER_MARKER = re.compile(
    r"(?i:(?:final\s+)?answer\s*(?:is|:|=|should\s+be|would\s+be|will\s+be)"
    r"|答案\s*(?:是|为|应该是|应为|:))"
)
_SENTENCE_END = re.compile(r"[.。!?！？](?=\s|$)|\n")


def final_number(text: str) -> str | None:
    """A math answer (GSM8K and alike), trying in order: "#### n", a number in the last
    \\boxed{}, the number stated after the last answer marker ("The answer is", "Answer:",
    "答案是") in its sentence, then the last number. Canonical (see `normalize_number`).

    In the marker's sentence the first number counts ("The answer is $18, two more than 16"),
    unless the sentence has "=", then the first number after the last "=" ("The answer is
    5 + 3 = 8")."""
    prepared = prepare(text)
    if not prepared:
        return None
    found = gsm8k_answer(prepared)
    prepared = _FRAC.sub(r"\1/\2", prepared)
    if found is not None:
        return found
    content = boxed(prepared)
    if content is not None:
        value = _number_from_boxed(content)
        if value is not None:
            return value
    for marker in reversed(list(_ANSWER_MARKER.finditer(prepared))):
        rest = prepared[marker.end():marker.end() + MAX_ANSWER_SENTENCE]
        end = _SENTENCE_END.search(rest)
        sentence = rest[:end.start()] if end else rest
        tokens = _number_tokens(sentence.rsplit("=", 1)[-1])
        if tokens:
            return _canonical(tokens[0])
    return last_number(prepared)


# --- option letters -----------------------------------------------------------------------------

def _check_options(options: str) -> str:
    if (not isinstance(options, str) or not 2 <= len(options) <= len(ALL_OPTIONS)
            or options != ALL_OPTIONS[:len(options)]):
        raise SpecError("options", f"must be the first 2 to 10 letters of {ALL_OPTIONS}, "
                                   f"like ABCD")
    return options


_LOWER_WORD = re.compile(r"\s[a-z]")
_LETTER_VERB = re.compile(r"\s(?:is|was|and|or|seems|fits|looks|matches|does|isn't|doesn't)\b")


@functools.lru_cache(maxsize=16)
def _letter_patterns(options: str) -> list[re.Pattern]:
    """Explicit answer statements; the letter is group "x". Marker words match in any case, the
    letter upper-case, or lower-case only when no word follows ("Answer: b", not "the answer is
    a virus"). Whitespace is possessive (\\s*+): never given back, so no backtracking."""
    up, low = options, options.lower()
    # The letter as models write it: B, (B), [B], 'B', "B", option B, 选项B
    letter = (r"(?i:option\s*+|choice\s*+|选项\s*+)?[(\[{'\"]?\s*+"
              rf"(?P<x>[{up}](?![A-Za-z])|[{low}](?![A-Za-z])(?!\s++[A-Za-z]))")
    verb = r"(?:is|would\s++be|should\s++be|will\s++be|must\s++be)"
    return [re.compile(p) for p in (
        # "the answer is (B)", "Answer: B", "correct answer: b", "Final Answer: B"
        rf"(?i:\banswers?\s*+(?:{verb})?\s*+(?:most\s++likely|probably|therefore|thus)?\s*+"
        rf"[:=]?\s*+)" + letter,
        # "the correct option is B", "the best choice would be (D)"
        rf"(?i:\b(?:option|choice)\s++{verb}\s*+[:=]?\s*+)" + letter,
        r"(?i:\b(?:I|we)(?:\s++would|['’]d)?\s++(?:choose|select|pick|go\s++with))\s++" + letter,
        # 答案是C, 答案为：C, 答案选C, 正确答案是 C, 正确选项为B
        r"(?:答案|正确选项)\s*+(?:应该是|应为|是|为|选)?\s*+:?\s*+" + letter,
        # 故选C, 应选C, 所以选 B, 选择D
        r"(?:[故应即我]|所以|因此)?选(?:择)?\s*+:?\s*+" + letter,
        # "(B) is correct", "Option B is the right answer", "C是正确的", "C项正确"
        r"(?<![A-Za-z])(?i:option\s*+|选项\s*+)?[(\[]?(?P<x>[" + up + r"])[)\]]?\s*+"
        r"(?:(?i:is\s++(?:the\s++)?(?:correct|right|best)\b)|项?\s*+是?正确)",
        # \boxed{B}, \boxed{\text{B}}
        r"\\boxed\{\s*+(?:\\text(?:bf)?\{)?\s*+(?P<x>[" + up + r"])\s*+\}",
    )]


def option_letter(text: str, options: str = "ABCD", choices: Sequence[str] | None = None
                  ) -> str | None:
    """The option a multiple-choice output chose, upper-case, or None.

    In order (the first rule that finds something decides):
    1. the last explicit answer statement ("The answer is (B)", "**Answer: C**", "Answer: b",
       "答案是 C", "故选C", "(B) is correct", "\\boxed{B}"); markdown emphasis is ignored;
    2. an output that starts with the letter as an option label ("B", "B.", "(B)", "B) text",
       "B: text") but not as a word ("A virus..." is the article);
    3. the last line that is only a letter ("B" or "(B)." alone on a line);
       (2 and 3 are skipped when the output lists the options, "A. ...\nB. ...": it only
       repeated the question);
    4. with `choices` (the option texts): the one option text the output states, when exactly
       one appears;
    5. a standalone capital letter anywhere, only if exactly one distinct option letter appears
       that way, and not as a word ("A", "I" followed by a lower-case word are English). Several
       different letters are ambiguous: None, not OpenCompass's first-letter guess.
    Letters outside `options` never count ("The answer is E" with ABCD is no answer)."""
    options = _check_options(options)
    text = prepare(text)
    if not text.strip():
        return None
    plain = re.sub(r"[*_`]+", "", text)  # markdown bold/italics/code around letters
    # 1. explicit statements: the last one in the text wins (a correction comes after)
    best = None
    for pattern in _letter_patterns(options):
        for m in pattern.finditer(plain):
            if best is None or m.start("x") > best[0]:
                best = (m.start("x"), m.group("x").upper())
    if best:
        return best[1]
    # An output that lists the options ("A. ...\nB. ...") only repeated the question: its
    # labels are not a choice.
    labels = set(re.findall(rf"(?m)^\s*[(\[]?([{options}])[)\].:]", plain))
    if len(labels) < 2:
        # 2. starts with the label
        m = re.match(rf"[(\[]?([{options}])(?:[)\].:]|\s*$)", plain.strip())
        if m:
            return m.group(1)
        # 3. a line that is only a letter
        lines = re.findall(rf"(?m)^\s*[(\[]?([{options}])[)\]]?\s*[.。]?\s*$", plain)
        if lines:
            return lines[-1]
    # 4. option texts
    if choices:
        lowered = plain.lower()
        hits = {options[i] for i, choice in enumerate(choices[:len(options)])
                if isinstance(choice, str) and len(choice.strip()) >= 2
                and re.search(rf"(?<!\w){re.escape(choice.strip().lower())}(?!\w)", lowered)}
        if len(hits) == 1:
            return hits.pop()
    # 5. one standalone letter; "A" and "I" before a lower-case word are English words ("A
    # virus", "I think"), except before a verb a letter takes ("A is wrong", "I is right")
    found = {m.group(1) for m in re.finditer(
        rf"(?<![A-Za-z])([{options}])(?![A-Za-z])(?!['’][a-z])", plain)
        if not (m.group(1) in "AI" and _LOWER_WORD.match(plain, m.end())
                and not _LETTER_VERB.match(plain, m.end()))}
    if len(found) == 1:
        return found.pop()
    return None


# --- a user's regex -----------------------------------------------------------------------------

# Nested quantifiers like (a+)+ backtrack exponentially on a near-miss. Refusing the common
# shapes when a benchmark is saved gives an early, clear error; the match timeout below is what
# bounds every other slow pattern (\w*\w*\w*$, (x|x)*y, ...).
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)\s*[+*{]")


def compile_pattern(pattern: str, field: str = "answer_pattern") -> regex.Pattern:
    """Compile a benchmark's answer regex (the `regex` module, whose syntax is `re`'s plus
    extras), refused with a `SpecError` naming `field` when it is too long, does not compile,
    nests quantifiers, or has more than one capture group. The answer is group 1, or the whole
    match when there is no group."""
    if not isinstance(pattern, str) or not pattern:
        raise SpecError(field, "must be a non-empty regular expression")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise SpecError(field, f"is longer than {MAX_PATTERN_CHARS} characters")
    if _NESTED_QUANTIFIER.search(pattern):
        raise SpecError(field, "nests a repeat inside a repeat, like (a+)+, which can take "
                               "exponential time; write it without the outer repeat")
    try:
        compiled = regex.compile(pattern)
    except (regex.error, ValueError, OverflowError) as e:
        raise SpecError(field, f"is not a valid regular expression: {e}") from None
    if compiled.groups > 1:
        raise SpecError(field, "has more than one capture group; use (?:...) for grouping and "
                               "one (...) around the answer")
    return compiled


def regex_answer(text: str, pattern: str | regex.Pattern, field: str = "answer_pattern"
                 ) -> str | None:
    """The last match of a benchmark's regex (group 1 if it has one), stripped. The pattern
    reads the last `MAX_REGEX_INPUT_CHARS` characters and must finish within
    `REGEX_TIMEOUT_S`; a slower pattern is a `SpecError` (the benchmark's pattern is broken, and
    every output would cost as much), not a silent "no answer"."""
    compiled = compile_pattern(pattern, field) if isinstance(pattern, str) else pattern
    tail = prepare(text)[-MAX_REGEX_INPUT_CHARS:]
    last = None
    try:
        for m in compiled.finditer(tail, timeout=REGEX_TIMEOUT_S):
            last = m
    except TimeoutError:
        raise SpecError(field, f"took more than {REGEX_TIMEOUT_S:g} s on one output (it "
                               "backtracks too much); simplify it") from None
    if last is None:
        return None
    value = last.group(1) if compiled.groups else last.group(0)
    return value.strip() if value is not None else None


# --- tool calls (agent benchmarks) --------------------------------------------------------------

CALCULATOR = "calculator"  # workers/core/data/generators.py CALCULATOR_TOOL
_CALL_START = re.compile(r"^\s*[{\[]")


@dataclass(frozen=True)
class CalculatorCall:
    """What an agent-style output asked for: `attempted` (it tried to call a tool), the first
    calculator call's `expression` (None when no call parsed as one) and its exact `value` (None
    when the expression is not arithmetic the calculator accepts)."""
    attempted: bool
    expression: str | None = None
    value: str | None = None


def calculator_call(text: str, tools: list | None = None) -> CalculatorCall:
    """The first calculator call of a model output, parsed as the serving engine parses calls
    (workers/core/inference/tools.py: a Hermes/Qwen `<tool_call>{"name": ..., "arguments":
    {...}}</tool_call>`, or a reply that is only the JSON call) among `tools` (default: the
    calculator); its expression is evaluated exactly with the calculator's own evaluator (numbers,
    + - * / and parentheses), canonical like every number here. A reasoning model's drafts before
    its last </think> are not its call."""
    from workers.core.data.generators import evaluate
    from workers.core.inference.tools import OPEN_TAG, parse_tool_calls

    text, _ = _after_thinking(text)
    _, calls = parse_tool_calls(text, tools if tools else [{"type": "function", "function": {"name": CALCULATOR}}])
    for call in calls:
        if call["function"]["name"] != CALCULATOR:
            continue
        try:
            expression = json.loads(call["function"]["arguments"]).get("expression")
        except (ValueError, AttributeError):
            return CalculatorCall(True)
        if not isinstance(expression, str):
            return CalculatorCall(True)
        try:
            value = evaluate(expression)
        except (ValueError, TypeError):
            return CalculatorCall(True, expression)
        shown = f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator)
        return CalculatorCall(True, expression, _canonical(shown))
    return CalculatorCall(bool(calls) or OPEN_TAG in text or bool(_CALL_START.match(text)))


def tool_call_answer(text: str, tools: list | None = None) -> str | None:
    """The answer of an agent-style output: the value of its calculator call, or of its text.

    A reply that tried to call but whose call does not parse (malformed JSON, an unknown tool, an
    expression that is not arithmetic) has no answer: the digits inside a broken call are not an
    answer. A reply in plain text is read by `final_number` ("#### n", \\boxed{}, "The answer
    is", else the last number). (An agent benchmark runs the call and reads the model's final
    reply instead: evaluation/tool_round.py.)"""
    call = calculator_call(text, tools)
    if call.attempted:
        return call.value
    return final_number(text)


# --- by name, for a scorer's settings -----------------------------------------------------------

EXTRACTORS = ("last_number", "gsm8k", "boxed", "final_number", "option", "regex", "tool_call")
NUMBER_EXTRACTORS = ("last_number", "gsm8k", "final_number", "tool_call")


def extract(kind: str, text: str, *, options: str = "ABCD", choices: Sequence[str] | None = None,
            pattern: str | regex.Pattern | None = None, tools: list | None = None) -> str | None:
    """Run the extractor named `kind` (one of EXTRACTORS) on a model output (`tools`: the
    benchmark's tool schemas, for tool_call)."""
    if kind == "last_number":
        return last_number(text)
    if kind == "gsm8k":
        return gsm8k_answer(text)
    if kind == "boxed":
        return boxed(text)
    if kind == "final_number":
        return final_number(text)
    if kind == "option":
        return option_letter(text, options, choices)
    if kind == "regex":
        if pattern is None:
            raise SpecError("answer_pattern", "is required by the regex extractor")
        return regex_answer(text, pattern)
    if kind == "tool_call":
        return tool_call_answer(text, tools)
    raise SpecError("extractor", f"must be one of {', '.join(EXTRACTORS)}, got {kind!r}"[:200])


def answers_match(kind: str, extracted: str | None, reference: str) -> bool:
    """Whether an extracted answer equals the reference: by number for the number extractors
    (and for boxed/regex answers that are numbers), case-insensitively for option letters,
    whitespace-normalised text otherwise."""
    if extracted is None:
        return False
    if kind in NUMBER_EXTRACTORS:
        return numbers_equal(extracted, reference)
    if kind == "option":
        return extracted.strip().upper() == str(reference).strip().upper()
    if numbers_equal(extracted, reference):
        return True
    if kind == "boxed" and _number_from_boxed(extracted) is not None:
        return _number_from_boxed(extracted) == normalize_number(str(reference))
    return _squash(extracted) == _squash(str(reference))


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()
