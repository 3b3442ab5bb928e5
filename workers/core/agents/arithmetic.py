"""The one safe arithmetic evaluator: the agent's calculator tool, the data generator's exact
answers (workers/core/data/generators.py re-exports `evaluate`) and the agent benchmark's
argument check (evaluation/extract.py) all compute with it, so a training dialogue, a tool call
and its score agree on every value.

It walks the parsed AST (never `eval`) and knows only numbers, parentheses, unary minus/plus and
the binary operators it is given: + - * / by default (what the generated dialogues teach, and
what the generator's answers need), or also // % ** (`ALL_OPERATORS`, the calculator tool).
Arithmetic is exact (Fraction), except a power with a non-integer exponent (a float root).

Every bound is checked before the work it protects: the input length before parsing, the AST's
nesting depth (iteratively) before the recursive walk, and each result's size before it is
computed (a power's bits are estimated from its base and exponent), so `9**9**9`, `__import__`,
attribute access, calls and names are ValueErrors and nothing hostile is executed or allocated.
"""
from __future__ import annotations

import ast
import math
import operator
from fractions import Fraction

MAX_EXPRESSION_CHARS = 1000  # a model's tool call is evaluated too: bound the work before parsing
MAX_DEPTH = 200  # AST levels (a chain "1+1+...+1" of 200 terms is 200 levels deep)
MAX_RESULT_BITS = 10_000  # numerator + denominator of any intermediate value (~3000 digits)

_BINARY = {
    "+": (ast.Add, operator.add), "-": (ast.Sub, operator.sub), "*": (ast.Mult, operator.mul),
    "/": (ast.Div, operator.truediv), "//": (ast.FloorDiv, operator.floordiv), "%": (ast.Mod, operator.mod),
    "**": (ast.Pow, None),  # powers are checked and computed by _power
}
BASIC_OPERATORS = ("+", "-", "*", "/")
ALL_OPERATORS = ("+", "-", "*", "/", "//", "%", "**")


def _bits(value: Fraction) -> int:
    return value.numerator.bit_length() + value.denominator.bit_length()


def _depth(tree: ast.AST) -> int:
    """Nesting depth of `tree`, without recursion (so depth itself cannot overflow the stack)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return deepest


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator == 1:
        n = abs(exponent.numerator)
        # |base| of 0 or 1 stays small whatever the exponent; otherwise the result has about
        # n times the base's bits: refuse before computing it.
        if abs(base) not in (0, 1) and n * max(_bits(base), 2) > MAX_RESULT_BITS:
            raise ValueError(f"the result of this power would exceed {MAX_RESULT_BITS} bits")
        if base == 0 and exponent < 0:
            raise ZeroDivisionError("0 cannot be raised to a negative power")
        return base ** exponent.numerator
    if base < 0:
        raise ValueError("a negative number to a fractional power is not a real number")
    try:
        result = float(base) ** float(exponent)  # a root: inexact by nature, float precision
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise ValueError("the result of this power is too large")
    return Fraction(repr(result))  # the float's shortest decimal, as a literal would be read


def evaluate(expression: str, *, operators: tuple[str, ...] = BASIC_OPERATORS) -> Fraction:
    """Exact value of an arithmetic expression (numbers, parentheses, unary minus and plus, and
    the binary `operators`: by default + - * /); anything else is a ValueError that says why."""
    allowed = {_BINARY[symbol][0]: (symbol, _BINARY[symbol][1]) for symbol in operators}
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"an expression must be a string of at most {MAX_EXPRESSION_CHARS} characters")

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            if isinstance(node.value, float) and not math.isfinite(node.value):
                raise ValueError(f"the number {_snippet(expression, node)} is too large")
            # The literal's decimal text, so 0.1 is 1/10 and not the binary float's 3602879701896397/2**55.
            return Fraction(node.value) if isinstance(node.value, int) else Fraction(repr(node.value))
        if isinstance(node, ast.BinOp) and type(node.op) in allowed:
            left, right = walk(node.left), walk(node.right)
            symbol, function = allowed[type(node.op)]
            if symbol == "**":
                value = _power(left, right)
            else:
                if _bits(left) + _bits(right) > 2 * MAX_RESULT_BITS:
                    raise ValueError(f"an intermediate value would exceed {MAX_RESULT_BITS} bits")
                value = Fraction(function(left, right))
            if _bits(value) > MAX_RESULT_BITS:
                raise ValueError(f"an intermediate value exceeds {MAX_RESULT_BITS} bits")
            return value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = walk(node.operand)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            raise ValueError(f"the operator {_symbol(node.op)} is not allowed (allowed: {' '.join(operators)})")
        raise ValueError(f"not an arithmetic expression: {type(node).__name__.lower()} "
                         f"{_snippet(expression, node)!r} is not allowed (numbers, parentheses and "
                         f"{' '.join(operators)} only)")

    try:
        tree = ast.parse(expression.strip(), mode="eval")
        if _depth(tree) > MAX_DEPTH:
            raise ValueError(f"the expression is nested more than {MAX_DEPTH} levels deep")
        return walk(tree)
    # Overflow: a literal like 1e400 is inf; the others cannot be reached past the bounds above,
    # but a calculator must never let one escape as anything but a ValueError.
    except (SyntaxError, ZeroDivisionError, OverflowError, RecursionError, MemoryError) as exc:
        if isinstance(exc, ZeroDivisionError):
            detail = "division by zero"
        elif isinstance(exc, SyntaxError):
            detail = f"syntax error ({exc.msg})"
        elif isinstance(exc, OverflowError):
            detail = "the result is too large"
        else:
            detail = exc.__class__.__name__
        raise ValueError(f"cannot evaluate {expression[:100]!r}: {detail}") from None


_OTHER_SYMBOLS = {ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^", ast.MatMult: "@"}


def _symbol(op: ast.operator) -> str:
    known = next((symbol for symbol, (kind, _) in _BINARY.items() if isinstance(op, kind)), None)
    return known or _OTHER_SYMBOLS.get(type(op), type(op).__name__)


def _snippet(expression: str, node: ast.AST) -> str:
    segment = ast.get_source_segment(expression.strip(), node) or ""
    return segment[:40]


def as_json_number(value: Fraction) -> int | float | str:
    """A value as a JSON number: an integer exactly, else a float; a fraction too large for a
    float stays exact as "numerator/denominator"."""
    if value.denominator == 1:
        return value.numerator
    try:
        return float(value)
    except OverflowError:
        return f"{value.numerator}/{value.denominator}"
