"""YAML from users (preset files, the training form's Advanced box), bounded before it is built.

`yaml.safe_load` refuses Python objects but not size: 353 bytes of nested aliases (a "billion
laughs") expand to millions of list items, and a few thousand `[` overflow the recursive
composer. So the text is first walked as a stream of parser events (PyYAML's parser is a state
machine, not recursive) counting the nesting depth, the aliases and the number of nodes the
document would have once every alias is expanded, and only a document inside every bound is
composed and constructed. Errors name the line.
"""
from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 64 * 2**10
MAX_DEPTH = 32
MAX_NODES = 10_000  # after alias expansion
MAX_ALIASES = 100

# libyaml when present (faster); both build only plain Python values.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlInputError(ValueError):
    """The text is not YAML, or is outside a bound. `line` is 1-based, or None for the whole text."""

    def __init__(self, line: int | None, reason: str) -> None:
        self.line = line
        self.reason = reason
        super().__init__(f"line {line}: {reason}" if line else reason)


def load(text: str | bytes, **limits) -> Any:
    """The Python value of one YAML document (None for an empty one), or YamlInputError."""
    return load_with_node(text, **limits)[0]


def load_with_node(text: str | bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH,
                   max_nodes: int = MAX_NODES, max_aliases: int = MAX_ALIASES) -> tuple[Any, yaml.Node | None]:
    """(value, root node): the node keeps each key's line for error messages. Composing twice is
    cheap once the text is known to be small and shallow."""
    text = _as_text(text, max_bytes)
    check_bounds(text, max_depth=max_depth, max_nodes=max_nodes, max_aliases=max_aliases)
    try:
        node = yaml.compose(text, Loader=_LOADER)
        value = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        raise _syntax_error(exc) from None
    except (ValueError, OverflowError) as exc:  # e.g. an integer past Python's 4,300-digit limit
        raise YamlInputError(None, f"a value cannot be read ({str(exc)[:80]})") from None
    return value, node


def check_bounds(text: str, *, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES,
                 max_aliases: int = MAX_ALIASES) -> None:
    """Walk the parser events once; raise at the first event past a bound."""
    # frames of the open collections: [anchor, expanded size so far]
    frames: list[list] = [[None, 0]]
    anchored: dict[str, int] = {}  # anchor → expanded size of its node
    total = aliases = 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            line = event.start_mark.line + 1 if event.start_mark else None
            if isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > max_aliases:
                    raise YamlInputError(line, f"more than {max_aliases} aliases (*name)")
                size = anchored.get(event.anchor, 1)  # an alias of an open node is a cycle: counted once
            elif isinstance(event, yaml.ScalarEvent):
                size = 1
                if event.anchor:
                    anchored[event.anchor] = 1
            elif isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                if len(frames) > max_depth:
                    raise YamlInputError(line, f"nested more than {max_depth} levels deep")
                frames.append([event.anchor, 1])
                total += 1
                continue
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                anchor, size = frames.pop()
                if anchor:
                    anchored[anchor] = size
                frames[-1][1] += size
                continue
            else:
                continue
            frames[-1][1] += size
            total += size
            if total > max_nodes:
                raise YamlInputError(line, f"more than {max_nodes:,} values once aliases are expanded")
    except yaml.YAMLError as exc:
        raise _syntax_error(exc) from None


def _as_text(text: str | bytes, max_bytes: int) -> str:
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise YamlInputError(None, f"the text is longer than the limit of {max_bytes:,} bytes")
    if isinstance(text, bytes):
        try:
            return text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise YamlInputError(None, f"not UTF-8 text (byte {exc.start})") from None
    return text


def _syntax_error(exc: yaml.YAMLError) -> YamlInputError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    return YamlInputError(mark.line + 1 if mark else None, f"not valid YAML ({str(problem)[:120]})")
