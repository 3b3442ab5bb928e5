"""Converting one raw record of a source format into its canonical record (see schema.py).

`normalize(fmt, raw, columns)` returns the canonical dict or raises `Invalid(field, reason,
detail)`, where `field` is the file's own field name (after the column map) with a path inside
it ("conversations[3].from") and `reason` is short and stable so that errors can be counted.
"""
from __future__ import annotations

import json
import re
import string
import textwrap

LETTERS = string.ascii_uppercase

# The fields each source format reads; a column map may rename exactly these.
SOURCE_FIELDS: dict[str, tuple[str, ...]] = {
    "text": ("text", "id"),
    "alpaca": ("instruction", "input", "output", "system", "history", "id"),
    "sharegpt": ("conversations", "tools", "system", "id"),
    "messages": ("messages", "tools", "id"),
    "preference": ("prompt", "chosen", "rejected", "conversations", "system", "id"),
    "multiple_choice": ("question", "choices", "answer", "subject", "id", *LETTERS),
    "qa": ("question", "answer", "id"),
    "code": ("task_id", "prompt", "test", "tests", "entry_point", "canonical_solution",
             "text", "code", "test_list", "test_setup_code"),  # the last four: MBPP
}

# ShareGPT "from" tags (LLaMA-Factory's defaults) and OpenAI roles, both accepted everywhere.
ROLE_TAGS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
             "observation": "tool", "tool": "tool", "function_call": "function_call"}


class Invalid(Exception):
    def __init__(self, field: str, reason: str, detail: str = "") -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.detail = detail


class Columns:
    """Source field name → the file's column name, from a user's column map."""

    def __init__(self, column_map: dict[str, str] | None = None) -> None:
        self.map = dict(column_map or {})

    def __call__(self, name: str) -> str:
        return self.map.get(name, name)

    def inverse(self, keys) -> list[str]:
        back = {column: name for name, column in self.map.items()}
        return [back.get(k, k) for k in keys]


def check_column_map(fmt: str, column_map) -> str | None:
    """Why a column map is unusable for `fmt`, or None when it is fine."""
    if column_map is None:
        return None
    if not isinstance(column_map, dict):
        return "column_map must map field names to column names"
    allowed = SOURCE_FIELDS[fmt]
    for name, column in column_map.items():
        if name not in allowed:
            shown = ", ".join(f for f in allowed if len(f) > 1)
            extra = ", A..Z" if fmt == "multiple_choice" else ""
            return f"column_map: unknown field '{name}' for {fmt} (allowed: {shown}{extra})"
        if not isinstance(column, str) or not column:
            return f"column_map: the column for '{name}' must be a non-empty string"
    return None


def known_field_names(column_map: dict[str, str] | None = None) -> set[str]:
    """Names that make a first CSV row a header."""
    names = {f for fields in SOURCE_FIELDS.values() for f in fields if len(f) > 1}
    names |= set(LETTERS) | {f"choice{i}" for i in range(27)} | {"std_answer", "label"}
    names |= set((column_map or {}).values())
    return names


def case_aliases(names, column_map: dict[str, str] | None, fields=None) -> dict[str, str] | None:
    """The column map with each source field (of `fields`, default: all) that the file spells with
    other capitals (CMMLU's "Question", "Answer") mapped to that column, unless the user mapped
    it or the file also has the field as spelled. Errors then name the file's own column."""
    present = set(names)
    merged = dict(column_map or {})
    wanted = fields if fields is not None else {f for fs in SOURCE_FIELDS.values() for f in fs}
    for name in wanted:
        if len(name) < 2 or name in merged or name in present:
            continue
        spelled = [n for n in names if isinstance(n, str) and n.lower() == name.lower()]
        if len(spelled) == 1:
            merged[name] = spelled[0]
    return merged or column_map


def detect_format(keys) -> str | None:
    """The source format whose fields a record has (keys already mapped back to field names)."""
    k = set(keys)
    if "chosen" in k and "rejected" in k:
        return "preference"
    if "conversations" in k:
        return "sharegpt"
    if "messages" in k:
        return "messages"
    if "instruction" in k and ("output" in k or "instances" in k):
        return "alpaca"
    if "prompt" in k and ("test" in k or "tests" in k) and "entry_point" in k:
        return "code"
    if "code" in k and "test_list" in k:  # MBPP
        return "code"
    if "question" in k and "answerKey" in k:  # ARC
        return "multiple_choice"
    if "question" in k and "answer" in k:
        if "choices" in k or {"A", "B"} <= k or {"choice0", "choice1"} <= k or {"choice1", "choice2"} <= k:
            return "multiple_choice"
        return "qa"
    if "text" in k:
        return "text"
    return None


# ---------------------------------------------------------------------------------------------
# small typed getters


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number")


def _get(raw: dict, column: str, required: bool = True):
    value = raw.get(column)
    if value is None and required:
        raise Invalid(column, "missing field", "null" if column in raw else "")
    return value


def _str(raw: dict, column: str, *, required: bool = True, nonempty: bool = True, numbers: bool = False):
    value = _get(raw, column, required)
    if value is None:
        return None
    return _as_str(value, column, nonempty=nonempty, numbers=numbers)


def _as_str(value, field: str, *, nonempty: bool = True, numbers: bool = False) -> str:
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise Invalid(field, "not a string", f"found {_kind(value)}")
    if nonempty and not value.strip():
        raise Invalid(field, "empty text")
    return value


def _list(value, field: str) -> list:
    if not isinstance(value, list):
        raise Invalid(field, "not a list", f"found {_kind(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# tools and tool calls


def _arguments(value, field: str) -> str:
    if value is None:
        return "{}"
    if isinstance(value, str):
        try:
            json.loads(value)
        except ValueError:
            raise Invalid(field, "invalid tool call", "arguments are not valid JSON") from None
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    raise Invalid(field, "invalid tool call", f"arguments are {_kind(value)}")


def _tool_call(call, field: str) -> dict:
    if not isinstance(call, dict):
        raise Invalid(field, "invalid tool call", f"found {_kind(call)}, expected an object with a name")
    fn = call["function"] if isinstance(call.get("function"), dict) else call
    name = fn.get("name")
    if not isinstance(name, str) or not name.strip():
        raise Invalid(field, "invalid tool call", "no function name")
    return {"type": "function", "function": {"name": name, "arguments": _arguments(fn.get("arguments"), field)}}


def _tool_calls_from_value(value, field: str) -> list[dict]:
    """A ShareGPT function_call value: JSON {"name", "arguments"} or a list of them."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise Invalid(field, "invalid tool call", "the value is not valid JSON") from None
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise Invalid(field, "invalid tool call", "no call")
    return [_tool_call(c, field) for c in calls]


def _tools(value, field: str) -> list[dict]:
    """ToolSpecs from a JSON string or a list of {"name", "description", "parameters"} (bare or
    wrapped in {"type": "function", "function": ...})."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise Invalid(field, "invalid JSON", "tools must be a JSON list of functions") from None
    tools = []
    for i, item in enumerate(_list(value, field)):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise Invalid(where, "invalid tool", f"found {_kind(item)}, expected an object")
        fn = item["function"] if isinstance(item.get("function"), dict) else item
        name = fn.get("name")
        if not isinstance(name, str) or not name.strip():
            raise Invalid(where, "invalid tool", "no function name")
        spec: dict = {"name": name}
        if fn.get("description") is not None:
            spec["description"] = _as_str(fn["description"], f"{where}.description", nonempty=False)
        if fn.get("parameters") is not None:
            if not isinstance(fn["parameters"], dict):
                raise Invalid(f"{where}.parameters", "invalid tool", "parameters must be a JSON schema object")
            spec["parameters"] = fn["parameters"]
        tools.append({"type": "function", "function": spec})
    return tools


# ---------------------------------------------------------------------------------------------
# messages


def _content(value, field: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: only text parts are kept
        texts = []
        for j, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            text = part.get("text", part.get("value")) if isinstance(part, dict) else None
            if kind != "text" or not isinstance(text, str):
                raise Invalid(f"{field}[{j}]", "unsupported content part",
                              f"type {kind!r}; only text parts are imported")
            texts.append(text)
        return "\n".join(texts)
    raise Invalid(field, "not a string", f"found {_kind(value)}")


def _message(obj, field: str) -> dict:
    """One message in ShareGPT ({"from", "value"}) or OpenAI ({"role", "content", "tool_calls"})
    style; a ShareGPT function_call becomes an assistant message with tool_calls."""
    if not isinstance(obj, dict):
        raise Invalid(field, "not an object", f"found {_kind(obj)}")
    role_key, content_key = ("from", "value") if "from" in obj else ("role", "content")
    tag = obj.get(role_key)
    if tag is None:
        raise Invalid(f"{field}.{role_key}", "missing field")
    if not isinstance(tag, str) or tag not in ROLE_TAGS:
        raise Invalid(f"{field}.{role_key}", f"unknown role {str(tag)[:40]!r}",
                      "expected one of " + ", ".join(ROLE_TAGS))
    role = ROLE_TAGS[tag]
    if content_key not in obj and role != "assistant":
        raise Invalid(f"{field}.{content_key}", "missing field")
    if role == "function_call":
        return {"role": "assistant", "content": "",
                "tool_calls": _tool_calls_from_value(obj.get(content_key), f"{field}.{content_key}")}
    message = {"role": role, "content": _content(obj.get(content_key), f"{field}.{content_key}")}
    if role == "assistant" and obj.get("tool_calls"):
        calls = _list(obj["tool_calls"], f"{field}.tool_calls")
        message["tool_calls"] = [_tool_call(c, f"{field}.tool_calls[{j}]") for j, c in enumerate(calls)]
    if role != "tool" and not message.get("tool_calls") and not message["content"].strip():
        raise Invalid(f"{field}.{content_key}", "empty text")
    if role == "tool" and obj.get("name") is not None:
        message["name"] = _as_str(obj["name"], f"{field}.name")
    return message


def _messages(value, field: str) -> tuple[list[dict], list[str]]:
    """Converted messages and each one's field path."""
    items = _list(value, field)
    if not items:
        raise Invalid(field, "empty list")
    messages, paths = [], []
    pending: list[str] = []  # names of tool calls not answered yet, for the tool messages' "name"
    for i, obj in enumerate(items):
        message = _message(obj, f"{field}[{i}]")
        if message["role"] == "assistant" and message.get("tool_calls"):
            pending = [c["function"]["name"] for c in message["tool_calls"]]
        elif message["role"] == "tool":
            name = pending.pop(0) if pending else None
            if "name" not in message and name:
                message["name"] = name
        messages.append(message)
        paths.append(f"{field}[{i}]")
    return messages, paths


def _check_turns(messages: list[dict], paths: list[str]) -> None:
    """Rules every message list obeys: a system message only first, a tool result only after a
    tool call (or another result). (Empty texts are refused message by message.)"""
    for i, (m, path) in enumerate(zip(messages, paths)):
        if m["role"] == "system" and i > 0:
            raise Invalid(path, "system message not first")
        if m["role"] == "tool" and (i == 0 or not (messages[i - 1].get("tool_calls") or messages[i - 1]["role"] == "tool")):
            raise Invalid(path, "tool result without a tool call")


def _check_chat(messages: list[dict], paths: list[str], field: str) -> None:
    _check_turns(messages, paths)
    roles = [m["role"] for m in messages]
    if "user" not in roles:
        raise Invalid(field, "no user turn")
    if "assistant" not in roles:
        raise Invalid(field, "no assistant turn")
    first = 1 if roles[0] == "system" else 0
    if roles[first] != "user":
        raise Invalid(paths[first], "first turn is not from the user")
    if roles[-1] != "assistant":
        raise Invalid(paths[-1], "last turn is not from the assistant")


def _with_system(raw: dict, column: str, messages: list[dict], paths: list[str]) -> None:
    system = _str(raw, column, required=False, nonempty=False)
    if system is not None and system.strip():
        if messages and messages[0]["role"] == "system":
            raise Invalid(column, "two system messages", "the record has a system field and a system turn")
        messages.insert(0, {"role": "system", "content": system})
        paths.insert(0, column)


# ---------------------------------------------------------------------------------------------
# one function per source format


def _text(raw: dict, cols: Columns) -> dict:
    return {"text": _str(raw, cols("text"))}


def _alpaca(raw: dict, cols: Columns) -> dict:
    instruction = _str(raw, cols("instruction"), nonempty=False)
    if cols("output") not in raw and "instances" in raw:  # self-instruct seed tasks
        instances = _list(raw["instances"], "instances")
        if len(instances) != 1:
            raise Invalid("instances", "not exactly one instance", f"found {len(instances)}")
        instance = instances[0]
        if not isinstance(instance, dict):
            raise Invalid("instances[0]", "not an object", f"found {_kind(instance)}")
        input_ = _str(instance, "input", required=False, nonempty=False) or ""
        output = _as_str(instance.get("output"), "instances[0].output") if instance.get("output") is not None else None
        if output is None:
            raise Invalid("instances[0].output", "missing field")
    else:
        input_ = _str(raw, cols("input"), required=False, nonempty=False) or ""
        output = _str(raw, cols("output"))
    if not instruction.strip() and not input_.strip():
        raise Invalid(cols("instruction"), "empty text")
    messages, paths = [], []
    history = _get(raw, cols("history"), required=False)
    for i, pair in enumerate(_list(history, cols("history")) if history is not None else []):
        where = f"{cols('history')}[{i}]"
        if not (isinstance(pair, list) and len(pair) == 2):
            raise Invalid(where, "not a [question, answer] pair")
        messages += [{"role": "user", "content": _as_str(pair[0], f"{where}[0]")},
                     {"role": "assistant", "content": _as_str(pair[1], f"{where}[1]")}]
        paths += [f"{where}[0]", f"{where}[1]"]
    if instruction.strip() and input_.strip():
        user = f"{instruction}\n\n{input_}"
    else:
        user = instruction if instruction.strip() else input_
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    paths += [cols("instruction"), cols("output")]
    _with_system(raw, cols("system"), messages, paths)
    return {"messages": messages}


def _chat(raw: dict, cols: Columns, key: str) -> dict:
    field = cols(key)
    messages, paths = _messages(_get(raw, field), field)
    if key == "conversations":
        _with_system(raw, cols("system"), messages, paths)
    _check_chat(messages, paths, field)
    record = {"messages": messages}
    tools = _tools(raw.get(cols("tools")), cols("tools"))
    if tools:
        record["tools"] = tools
    return record


def _reply(raw: dict, column: str) -> list[dict]:
    value = _get(raw, column)
    if isinstance(value, str):
        messages, paths = [{"role": "assistant", "content": value}], [column]
    elif isinstance(value, dict):
        messages, paths = [_message(value, column)], [column]
    elif isinstance(value, list):
        messages, paths = _messages(value, column)
    else:
        raise Invalid(column, "not a string", f"found {_kind(value)}; expected a string, a message or messages")
    for m, path in zip(messages, paths):
        if m["role"] not in ("assistant", "tool"):
            raise Invalid(path, "not an assistant reply", f"role {m['role']!r}")
    if messages[0]["role"] != "assistant":
        raise Invalid(paths[0], "not an assistant reply", "the reply must start with an assistant message")
    _check_turns(messages, paths)
    return messages


def _preference(raw: dict, cols: Columns) -> dict:
    if cols("conversations") in raw:  # LLaMA-Factory: ShareGPT prompt, chosen/rejected messages
        field = cols("conversations")
    else:
        field = cols("prompt")
    value = _get(raw, field)
    if isinstance(value, str):
        if not value.strip():
            raise Invalid(field, "empty text")
        prompt, paths = [{"role": "user", "content": value}], [field]
    elif isinstance(value, dict):
        prompt, paths = [_message(value, field)], [field]
    elif isinstance(value, list):
        prompt, paths = _messages(value, field)
    else:
        raise Invalid(field, "not a string", f"found {_kind(value)}; expected a string or messages")
    _with_system(raw, cols("system"), prompt, paths)
    _check_turns(prompt, paths)
    roles = [m["role"] for m in prompt]
    if "user" not in roles:
        raise Invalid(field, "no user turn")
    if roles[-1] not in ("user", "tool"):
        raise Invalid(paths[-1], "prompt does not end with a user turn")
    return {"prompt": prompt, "chosen": _reply(raw, cols("chosen")), "rejected": _reply(raw, cols("rejected"))}


def _choice_columns(raw: dict, cols: Columns) -> list[str]:
    found = []
    for letter in LETTERS:
        column = cols(letter)
        if column in raw:
            found.append(column)
        elif letter.lower() in raw and letter not in cols.map:
            found.append(letter.lower())
        else:
            break
    if found:
        return found
    for start in (0, 1):
        found = []
        while f"choice{start + len(found)}" in raw:
            found.append(f"choice{start + len(found)}")
        if found:
            return found
    return []


def _answer_index(value, column: str, n: int) -> int:
    last = LETTERS[n - 1]
    index = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, str):
        s = value.strip()
        if len(s) == 1 and s.upper() in LETTERS:
            index = LETTERS.index(s.upper())
        elif s.isdigit():
            index = int(s)
    if index is None:
        raise Invalid(column, "invalid answer", f"{str(value)[:40]!r}: expected a letter A–{last} or a 0-based index")
    if not 0 <= index < n:
        shown = value if isinstance(value, int) else str(value).strip()
        raise Invalid(column, "answer out of range", f"answer {shown!r} but there are {n} choices (A–{last})")
    return index


def _inner_str(obj: dict, key: str, path: str) -> str:
    """A string inside a nested object, its error naming the whole path ("question.stem")."""
    if obj.get(key) is None:
        raise Invalid(path, "missing field")
    return _as_str(obj[key], path, numbers=True)


def _labelled_choices(value, field: str) -> tuple[list[str], list[str]] | None:
    """ARC's choices, [{"text", "label"}, ...] (its JSON Lines) or {"text": [...], "label": [...]}
    (its Hugging Face copy), as (labels, texts) ordered by label: numerically when every label is
    a number ("1".."4"), else alphabetically. None when `value` is a plain list of choices."""
    if isinstance(value, dict):
        texts = _list(value.get("text"), f"{field}.text")
        labels = _list(value.get("label"), f"{field}.label")
        if len(texts) != len(labels):
            raise Invalid(field, "labels do not match choices", f"{len(labels)} labels for {len(texts)} choices")
        pairs = [(_as_str(lab, f"{field}.label[{i}]", numbers=True).strip(),
                  _as_str(text, f"{field}.text[{i}]", numbers=True))
                 for i, (lab, text) in enumerate(zip(labels, texts))]
    elif isinstance(value, list) and value and all(isinstance(c, dict) for c in value):
        pairs = [(_inner_str(c, "label", f"{field}[{i}].label").strip(), _inner_str(c, "text", f"{field}[{i}].text"))
                 for i, c in enumerate(value)]
    else:
        return None
    labels = [lab for lab, _ in pairs]
    if len(set(labels)) != len(labels):
        raise Invalid(field, "duplicate label", ", ".join(labels))
    numeric = all(lab.isdigit() for lab in labels)
    pairs.sort(key=lambda pair: int(pair[0]) if numeric else pair[0])
    return [lab for lab, _ in pairs], [text for _, text in pairs]


def _multiple_choice(raw: dict, cols: Columns) -> dict:
    # ARC names its answer "answerKey"; a column map's "answer" or a plain "answer" wins
    answer_column = cols("answer") if cols("answer") in raw or "answerKey" not in raw else "answerKey"
    labels = None
    question = _get(raw, cols("question"))
    if isinstance(question, dict):  # ARC: {"stem", "choices": [{"text", "label"}, ...]}
        field = f"{cols('question')}.choices"
        labelled = _labelled_choices(question.get("choices"), field)
        question = _inner_str(question, "stem", f"{cols('question')}.stem")
        if labelled is None:
            raise Invalid(field, "not a list of labelled choices", 'expected [{"text": ..., "label": ...}, ...]')
        labels, choices = labelled
    else:
        question = _as_str(question, cols("question"))
        field = cols("choices")
        if field in raw:
            labelled = _labelled_choices(raw[field], field)
            if labelled is not None:
                labels, choices = labelled
            else:
                choices = [_as_str(c, f"{field}[{i}]", numbers=True) for i, c in enumerate(_list(raw[field], field))]
        else:
            columns = _choice_columns(raw, cols)
            if not columns:
                raise Invalid(field, "missing field", "no choices list and no A, B, ... columns")
            choices = [_as_str(raw[c], c, numbers=True) for c in columns]
    if not 2 <= len(choices) <= 26:
        raise Invalid(field, "wrong number of choices", f"found {len(choices)}, expected 2 to 26")
    if labels is not None:  # the answer is one of the labels
        key = _as_str(_get(raw, answer_column), answer_column, numbers=True).strip()
        if key not in labels:
            raise Invalid(answer_column, "answer not among the labels",
                          f"{key!r} but the labels are {', '.join(labels)}")
        answer = LETTERS[labels.index(key)]
    else:
        answer = LETTERS[_answer_index(_get(raw, answer_column), answer_column, len(choices))]
    record = {"question": question, "choices": choices, "answer": answer}
    subject = _str(raw, cols("subject"), required=False, nonempty=False)
    if subject:
        record["subject"] = subject
    return record


def _qa(raw: dict, cols: Columns) -> dict:
    return {"question": _str(raw, cols("question")), "answer": _str(raw, cols("answer"), numbers=True)}


_TOP_LEVEL_DEF = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)


def _python(source: str, field: str) -> str:
    """`source`, compiled (never run) so that a syntax error is an import error, not a failed check."""
    try:
        compile(source, field, "exec")
    except (SyntaxError, ValueError) as exc:
        where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise Invalid(field, "not valid Python", f"{getattr(exc, 'msg', exc)}{where}") from None
    return source


def _mbpp(raw: dict, cols: Columns, task_id: str) -> dict:
    """MBPP {task_id, text, code, test_list: [assert ...], test_setup_code?} (or its sanitized
    copy's {prompt, test_imports}) as a HumanEval-style problem, prompted as bigcode's harness
    does: the task and its first test in a docstring, the model writing the whole function. The
    asserts call the function by name, so `check(candidate)` just runs them; the entry point is
    the first top-level function of `code` that they call (else its first function)."""
    text_column = cols("text") if cols("text") in raw or cols("prompt") not in raw else cols("prompt")
    text = _str(raw, text_column).strip()
    code = _python(_str(raw, cols("code")).replace("\r\n", "\n"), cols("code"))
    field = cols("test_list")
    asserts = [_python(_as_str(t, f"{field}[{i}]").replace("\r\n", "\n").strip(), f"{field}[{i}]")
               for i, t in enumerate(_list(raw[field], field))]
    if not asserts:
        raise Invalid(field, "empty list", "MBPP needs at least one assert")
    if "test_imports" in raw and cols("test_setup_code") not in raw:
        imports = _list(raw["test_imports"], "test_imports")
        setup = "\n".join(_as_str(t, f"test_imports[{i}]") for i, t in enumerate(imports))
    else:
        setup = _str(raw, cols("test_setup_code"), required=False, nonempty=False) or ""
    setup = _python(setup.replace("\r\n", "\n").strip(), cols("test_setup_code"))
    names = _TOP_LEVEL_DEF.findall(code)
    if not names:
        raise Invalid(cols("code"), "no function definition", "expected a top-level 'def name(...)'")
    called = [n for n in names if any(re.search(rf"\b{n}\s*\(", a) for a in asserts)]
    body = "".join(textwrap.indent(a, "    ") + "\n" for a in asserts)
    return {"task_id": task_id, "prompt": f'"""\n{text}\n{asserts[0]}\n"""\n',
            "tests": (f"{setup}\n\n\n" if setup else "") + f"def check(candidate):\n{body}",
            "entry_point": (called or names)[0], "canonical_solution": code}


def _code(raw: dict, cols: Columns) -> dict:
    task_id = _str(raw, cols("task_id"), numbers=True)
    if cols("test_list") in raw:
        return _mbpp(raw, cols, task_id)
    prompt = _str(raw, cols("prompt"))
    tests_column = cols.map.get("tests") or cols.map.get("test") or ("tests" if "tests" in raw else "test")
    tests = _str(raw, tests_column)
    entry_point = _str(raw, cols("entry_point"))
    if not entry_point.strip().isidentifier():
        raise Invalid(cols("entry_point"), "not a Python identifier", f"{entry_point[:40]!r}")
    record = {"task_id": task_id, "prompt": prompt, "tests": tests, "entry_point": entry_point.strip()}
    solution = _str(raw, cols("canonical_solution"), required=False, nonempty=False)
    if solution is not None:
        record["canonical_solution"] = solution
    return record


CONVERTERS = {
    "text": _text,
    "alpaca": _alpaca,
    "sharegpt": lambda raw, cols: _chat(raw, cols, "conversations"),
    "messages": lambda raw, cols: _chat(raw, cols, "messages"),
    "preference": _preference,
    "multiple_choice": _multiple_choice,
    "qa": _qa,
    "code": _code,
}


def normalize(fmt: str, raw: dict, cols: Columns, line: int) -> dict:
    """The canonical record (with "meta": {"line", "id"?, "label"?}) or `Invalid`."""
    record = CONVERTERS[fmt](raw, cols)
    meta: dict = {"line": line}
    original_id = raw.get(cols("id"))
    if isinstance(original_id, (str, int)) and not isinstance(original_id, bool) and fmt != "code":
        meta["id"] = original_id
    if fmt in ("messages", "sharegpt") and isinstance(raw.get("label"), bool):
        meta["label"] = raw["label"]  # KTO: whether the reply is desirable
    record["meta"] = meta
    return record
