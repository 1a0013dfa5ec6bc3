"""CEL conditions: compiled once, checked statically, evaluated purely.

Engine choice. Both CEL bindings were measured here with the same 100 conditions over one shared
activation (``bench/rules.py --compare-google``, cel-expr-python installed outside the project):
``common-expression-language`` (Rust ``cel`` crate, ``import cel``) ≈ 120 µs per 100 conditions,
Google's ``cel-expr-python`` (C++ cel-cpp) ≈ 240 µs — 2.0–2.2× slower — on a loaded 2-core machine
(DESIGN §8 measured 43 vs 157 µs on a quiet one). Google's binding type-checks at compile time, the
Rust one does not; we take the faster one for the hot path (rules run on every event, and the
engine must stay within 7× of plain Python) and make up for the missing checker here:

* syntax errors come from ``cel.compile`` (with the column in the expression);
* every identifier must be a declared variable (``opp``, ``checklist``, …), a CEL type name or a
  variable bound by a macro (``opp.contacts.exists(c, …)``); every function must be one the
  runtime implements — so typos are caught at apply time, not at run time;
* the expression is evaluated against typed sample values (a *probe*): an operator applied to
  the wrong types (``opp.name > 5``) or a non-boolean result is a type error;
* limits bound the cost: at most ``MAX_CHARS`` characters, ``MAX_TOKENS`` tokens, nesting depth
  ``MAX_DEPTH`` and no macro inside another macro's body (so evaluation is linear in the input).

Evaluation is pure and deterministic (no clock, no I/O), so workflow code may call it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

import cel

from rules.cost import CostError, estimate

MAX_CHARS = 2000
MAX_TOKENS = 300
MAX_DEPTH = 12
MACROS = ("all", "exists", "exists_one", "map", "filter")
TYPE_NAMES = frozenset(
    {"int", "uint", "double", "string", "bytes", "bool", "list", "map", "null_type", "type"}
)
NATIVE_FUNCTIONS = frozenset(
    "size contains startsWith endsWith matches int uint double string bytes bool timestamp duration type dyn has "
    "getFullYear getMonth getDayOfYear getDayOfMonth getDate getDayOfWeek getHours getMinutes getSeconds "
    "getMilliseconds".split()
)

#: Variables of a rule condition and of a transition's entry criteria.
RULE_VARIABLES = frozenset({"opp", "event", "stage", "org", "branch", "role", "lead"})
TRANSITION_VARIABLES = frozenset({"opp", "checklist", "documents", "actor", "stage", "to"})

_TOKEN = re.compile(
    r"""\s*(?:(?P<str>[rRbB]{0,2}("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'))|(?P<num>\d+(\.\d+)?([eE][-+]?\d+)?u?)"""
    r"""|(?P<ident>[A-Za-z_]\w*)|(?P<op>&&|\|\||==|!=|<=|>=|[-+*/%!<>?:.,()\[\]{}]))"""
)
_BOUND = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
_CEL_POSITION = re.compile(r"<input>:(\d+):(\d+):\s*(.*?)(?:\n|$)")


class ExpressionError(ValueError):
    """An expression that cannot be used; ``column`` (1-based, in the expression) when known."""

    def __init__(self, message: str, column: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.column = column


class EvaluationError(Exception):
    """Evaluating a valid expression failed on these values (missing field, wrong runtime type…)."""


@dataclass(frozen=True, eq=False)
class Condition:
    """A compiled CEL expression."""

    source: str
    program: Any

    def evaluate(self, activation: cel.Context | dict) -> bool:
        """True or False for these variables; raises ``EvaluationError`` if evaluation fails."""
        try:
            result = self.program.execute(activation)
        except KeyError as exc:
            raise EvaluationError(f"no such field {exc.args[0]!r}") from None
        except Exception as exc:  # noqa: BLE001 - the binding raises TypeError/RuntimeError/ValueError…
            raise EvaluationError(_first_line(str(exc))) from None
        if not isinstance(result, bool):
            raise EvaluationError(f"condition must be a boolean, got {type(result).__name__}")
        return result


def activation(variables: dict[str, Any]) -> cel.Context:
    """One activation for many conditions: the values are converted to CEL once."""
    return cel.Context(variables)


def compile_condition(source: str, variables: frozenset[str], probes: tuple[dict, ...] = ()) -> Condition:
    """Compile and check an expression; raises ``ExpressionError`` with a clear message.

    ``variables`` are the names it may use; each of ``probes`` is a set of typed sample values
    it is evaluated against to find type errors (a missing field in a sample is not an error).
    """
    return _compile_typed(source, variables, probes, bool, "the condition must be a boolean")


def compile_timestamp(source: str, variables: frozenset[str], probes: tuple[dict, ...] = ()) -> Condition:
    """Compile and check an expression whose value is a timestamp (``timestamp(opp.close_date + "T00:00:00Z")
    - duration("168h")``); raises ``ExpressionError``. Evaluate it with :func:`evaluate_timestamp`."""
    return _compile_typed(source, variables, probes, datetime, "the expression must be a timestamp")


def _compile_typed(source: str, variables: frozenset[str], probes: tuple[dict, ...], kind: type,
                   must_be: str) -> Condition:
    """Compile ``source``, check its names, and evaluate it against each probe: a type error, or a value that is not
    a ``kind``, raises ``ExpressionError``."""
    condition = _compile(source)
    _check_names(condition, variables)
    for probe in probes:
        try:
            result = condition.program.execute(probe)
        except (KeyError, ZeroDivisionError):
            continue
        except Exception as exc:  # noqa: BLE001
            raise ExpressionError(f"CEL type error: {_first_line(str(exc))}") from None
        if not isinstance(result, kind):
            raise ExpressionError(f"CEL type error: {must_be}, not {_cel_type(result)}")
    return condition


def evaluate_timestamp(condition: Condition, variables: dict[str, Any]) -> datetime:
    """The timestamp of a compiled expression for these variables; raises ``EvaluationError``."""
    try:
        result = condition.program.execute(activation(variables))
    except KeyError as exc:
        raise EvaluationError(f"no such field {exc.args[0]!r}") from None
    except Exception as exc:  # noqa: BLE001 - the binding raises TypeError/RuntimeError/ValueError…
        raise EvaluationError(_first_line(str(exc))) from None
    if not isinstance(result, datetime):
        raise EvaluationError(f"the expression must be a timestamp, got {_cel_type(result)}")
    return result


@lru_cache(maxsize=4096)
def _compile(source: str) -> Condition:
    _check_limits(source)
    try:
        program = cel.compile(source)
    except Exception as exc:  # noqa: BLE001 - the binding raises ValueError with the parser's text
        text = str(exc)
        found = _CEL_POSITION.search(text)
        if found:
            detail = re.sub(r"\s*expecting \{.*\}$", "", found.group(3).strip()).removeprefix(
                "Syntax error: "
            )
            raise ExpressionError(f"CEL syntax error: {detail}", int(found.group(2))) from None
        raise ExpressionError(f"CEL syntax error: {_first_line(text)}") from None
    try:
        estimate(source)
    except CostError as exc:
        raise ExpressionError(exc.message, exc.column) from None
    return Condition(source, program)


def _check_limits(source: str) -> None:
    if not source.strip():
        raise ExpressionError("empty CEL expression")
    if len(source) > MAX_CHARS:
        raise ExpressionError(f"CEL expression too long: {len(source)} characters, at most {MAX_CHARS}")
    tokens = 0
    depth = 0
    macro_depths: list[int] = []  # paren depth at which each open macro call started
    pos = 0
    previous = ""
    while pos < len(source):
        if source[pos:].strip() == "":
            break
        match = _TOKEN.match(source, pos)
        if match is None:
            return  # let the parser report the bad character with its position
        tokens += 1
        token = match.group("op") or match.group("ident") or ""
        if token in "([{" and token:
            depth += 1
            if depth > MAX_DEPTH:
                raise ExpressionError(
                    f"CEL expression nested too deeply (more than {MAX_DEPTH} levels)", match.start("op") + 1
                )
            if token == "(" and previous in MACROS:
                if macro_depths:
                    raise ExpressionError(
                        f"CEL cost limit: macro {previous}() inside another macro is not allowed",
                        match.start("op") + 1,
                    )
                macro_depths.append(depth)
        elif token in ")]}" and token:
            if macro_depths and macro_depths[-1] == depth:
                macro_depths.pop()
            depth -= 1
        previous = token
        pos = match.end()
    if tokens > MAX_TOKENS:
        raise ExpressionError(f"CEL expression too complex: {tokens} tokens, at most {MAX_TOKENS}")


def _check_names(condition: Condition, variables: frozenset[str]) -> None:
    bound = set(_BOUND.findall(condition.source))
    for name in condition.program.variables():
        if name not in variables and name not in TYPE_NAMES and name not in bound:
            known = ", ".join(sorted(variables))
            raise ExpressionError(f"unknown variable {name!r} in CEL expression (known: {known})")
    for name in condition.program.functions():
        if name[0].isalpha() and name not in NATIVE_FUNCTIONS:
            raise ExpressionError(f"unknown CEL function {name!r}")


_STRINGS = re.compile(r"""[rRbB]{0,2}("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")


def references(source: str, variable: str) -> bool:
    """Whether an expression mentions a variable (outside string literals)."""
    return re.search(rf"(?<![\w.]){variable}\b", _STRINGS.sub('""', source)) is not None


def used_keys(sources: list[str], variable: str) -> frozenset[str] | None:
    """Top-level keys of ``variable`` the expressions use (``opp.amount`` → amount); None if it is used whole."""
    keys: set[str] = set()
    for source in sources:
        code = _STRINGS.sub('""', source)
        for match in re.finditer(rf"(?<![\w.]){variable}\b(\s*\.\s*([A-Za-z_]\w*))?", code):
            if match.group(2) is None:
                return None
            keys.add(match.group(2))
    return frozenset(keys)


def _cel_type(value: Any) -> str:
    names = {str: "string", int: "int", float: "double", list: "list", dict: "map", bytes: "bytes"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "evaluation failed"
