"""Action params templated with Jinja2 in a bounded sandbox (``{{ opp.name }}``).

Only string values containing ``{{`` or ``{%`` are templates; everything else is a constant. An
undefined name is an error (``StrictUndefined``): a rule whose params cannot be rendered does
not fire, and the dry-run says why.

Rendering is bounded, whatever the template (``BoundedEnvironment``): no mutation of lists or
dicts, no ``namespace``/``lipsum``/``cycler``; every operator and call that can make a value
larger than its inputs (``*``, ``**``, ``%``, ``+``, ``~``, ``replace``, ``join``, ``center``,
format widths…) is checked before it allocates, every string or list it makes is at most
``MAX_VALUE_CHARS``; loop iterations and calls together are at most ``MAX_STEPS`` per render; the
output stops at ``MAX_OUTPUT_CHARS`` while it is produced. Compile-time constant folding of the
checked operators is off (so ``{{ 'a' * 10**9 }}`` is refused, not computed, at apply time).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError

MAX_TEMPLATE_CHARS = 10_000
MAX_OUTPUT_CHARS = 100_000
MAX_VALUE_CHARS = 100_000
MAX_STEPS = 10_000  # loop iterations + calls per render
MAX_INT_BITS = 4_096
_GUARD = "__hub_loop__"
_BIG_NUMBER = re.compile(r"\d{6,}|\*")
_PERCENT_SPEC = re.compile(r"%[^a-zA-Z%]*")
_BRACE_SPEC = re.compile(r"\{[^{}]*\}")
_steps: ContextVar[list[int]] = ContextVar("template_steps")


def _refuse(message: str) -> None:
    raise SecurityError(f"template limit: {message}")


def _sized(value: Any) -> Any:
    """``value`` if it is not a string, list or mapping longer than ``MAX_VALUE_CHARS``."""
    if isinstance(value, str | bytes | list | tuple | dict) and len(value) > MAX_VALUE_CHARS:
        _refuse(f"a value of {len(value):,} items or characters, at most {MAX_VALUE_CHARS:,}")
    return value


def _step(count: int = 1) -> None:
    budget = _steps.get(None)
    if budget is None:
        return  # compile-time constant folding: no render running
    budget[0] -= count
    if budget[0] < 0:
        _refuse(f"more than {MAX_STEPS:,} loop iterations and calls")


def _loop(iterable: Any) -> Any:
    """Every ``{% for %}`` iterates through this: each item is a step."""
    for item in iterable:
        _step()
        yield item


def _check_format(fmt: Any) -> None:
    if isinstance(fmt, str):
        for spec in (*_PERCENT_SPEC.findall(fmt), *_BRACE_SPEC.findall(fmt)):
            if _BIG_NUMBER.search(spec):
                _refuse(f"format width {spec!r}")


def _text_len(value: Any) -> int:
    return len(value) if isinstance(value, str) else len(str(value))


def _check_growth(name: str, target: Any, args: tuple, kwargs: dict) -> None:
    """Refuse a call that would make a string far larger than its inputs, before it runs."""
    if not isinstance(target, str):
        return
    values = [*args, *kwargs.values()]
    widths = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    if any(w > MAX_VALUE_CHARS for w in widths):
        _refuse(f"{name}() with a width over {MAX_VALUE_CHARS:,}")
    texts = [v for v in values if isinstance(v, str)]
    longest = max(map(len, texts), default=0)
    if name == "replace" and texts:
        old = texts[0]
        times = len(target) + 1 if old == "" else target.count(old)
        estimate = len(target) + times * longest
    elif name in ("indent", "wordwrap"):
        estimate = len(target) + (target.count("\n") + len(target) // 2 + 1) * longest
    elif name == "expandtabs":
        estimate = len(target) + target.count("\t") * max(widths, default=8)
    elif name in ("format", "format_map"):
        _check_format(target)
        estimate = len(target) + sum(_text_len(v) for v in values if isinstance(v, str | int | float))
    else:
        return
    if estimate > MAX_VALUE_CHARS:
        _refuse(f"{name}() would make about {estimate:,} characters, at most {MAX_VALUE_CHARS:,}")


def _check_join(separator: Any, items: Any) -> list:
    items = list(items)
    if len(str(separator)) * len(items) > MAX_VALUE_CHARS:
        _refuse(f"join() of {len(items):,} items with a {len(str(separator))}-character separator")
    return items


def _bounded_filter(name: str, fn: Any) -> Any:
    """A filter that is a step and checks, like ``BoundedEnvironment.call``, what it would make."""
    skip = 1 if getattr(fn, "jinja_pass_arg", None) else 0  # the context/environment jinja passes first

    @wraps(fn)  # keeps jinja's pass_context/pass_environment marker
    def run(*args: Any, **kwargs: Any) -> Any:
        _step()
        value, rest = args[skip] if len(args) > skip else None, args[skip + 1 :]
        if name == "join" and value is not None:
            separator = rest[0] if rest else kwargs.get("d", "")
            args = (*args[:skip], _check_join(separator, value), *rest)
        elif name == "format":
            _check_format(value)
        else:
            _check_growth(name, value, rest, kwargs)
        return _sized(fn(*args, **kwargs))

    return run


class _Generator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:  # ``a ~ b``: checked, not folded
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with every way of making a large value or a long loop checked (module docstring)."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})
    code_generator_class = _Generator

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for name in ("namespace", "lipsum", "cycler", "joiner"):
            self.globals.pop(name, None)
        self.globals["range"] = self._range
        self.globals[_GUARD] = _loop
        self.filters = {name: _bounded_filter(name, fn) for name, fn in self.filters.items()}

    @staticmethod
    def _range(*args: int) -> range:
        values = range(*args)
        if len(values) > MAX_STEPS:
            _refuse(f"range of {len(values):,} items, at most {MAX_STEPS:,}")
        return values

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.Name(_GUARD, "load"), [loop.iter], [], None, None, lineno=loop.lineno)
        return tree

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """``*``, ``**``, ``%`` and ``+`` with their results bounded before they are computed."""
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    if len(seq) * times > MAX_VALUE_CHARS:
                        _refuse(f"a sequence repeated to {len(seq) * times:,} items, at most {MAX_VALUE_CHARS:,}")
            if isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                    _refuse(f"an integer over {MAX_INT_BITS} bits")
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if right > 0 and left.bit_length() * right > MAX_INT_BITS:
                _refuse(f"an integer over {MAX_INT_BITS} bits")
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
        return _sized(super().call_binop(context, operator, left, right))

    def concat(self, parts: Iterable[Any]) -> str:
        """``a ~ b ~ …`` (string concatenation), its length checked before it is built."""
        texts = [str(p) for p in parts]
        if sum(map(len, texts)) > MAX_VALUE_CHARS:
            _refuse(f"a string of {sum(map(len, texts)):,} characters, at most {MAX_VALUE_CHARS:,}")
        return "".join(texts)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Every call is a step; string methods that grow their input are checked first."""
        _step()
        method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        target, name = getattr(method, "__self__", None), getattr(method, "__name__", "")
        if isinstance(target, str) and name == "join" and args:
            args = (_check_join(target, args[0]), *args[1:])
        else:
            _check_growth(name, target, args, kwargs)
        return _sized(super().call(__context, __obj, *args, **kwargs))


_env = BoundedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


class TemplateProblem(ValueError):
    """A template that does not compile or render; ``path`` is where in the params it is."""

    def __init__(self, message: str, path: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def is_template(value: str) -> bool:
    """Whether a string is a template rather than a constant."""
    return "{{" in value or "{%" in value


@lru_cache(maxsize=4096)
def _compile(source: str):  # noqa: ANN202 - jinja2.Template
    if len(source) > MAX_TEMPLATE_CHARS:
        raise TemplateProblem(f"template too long: {len(source)} characters, at most {MAX_TEMPLATE_CHARS}")
    try:
        return _env.from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem(f"template syntax error: {exc.message}") from None


@dataclass(frozen=True, eq=False)
class ParamsTemplate:
    """Params compiled once; ``render(variables)`` returns a fresh dict."""

    tree: Any
    constant: bool

    def render(self, variables: dict[str, Any]) -> dict[str, Any]:
        """The params with every template rendered; raises ``TemplateProblem``."""
        if self.constant:
            return _copy(self.tree)
        return _render(self.tree, variables, ())


class FlatConstant(ParamsTemplate):
    """Constant params of scalars only: a shallow copy is a full copy."""

    def render(self, variables: dict[str, Any]) -> dict[str, Any]:
        """A fresh copy of the params."""
        return self.tree.copy()


class _Compiled:
    __slots__ = ("template", "source")

    def __init__(self, template: Any, source: str) -> None:
        self.template, self.source = template, source


def compile_params(params: dict[str, Any]) -> ParamsTemplate:
    """Compile every template in ``params``; raises ``TemplateProblem`` naming the bad one."""
    found = False

    def walk(node: Any, path: tuple[str | int, ...]) -> Any:
        nonlocal found
        if isinstance(node, str) and is_template(node):
            found = True
            try:
                return _Compiled(_compile(node), node)
            except TemplateProblem as exc:
                raise TemplateProblem(exc.message, path) from None
        if isinstance(node, dict):
            return {k: walk(v, (*path, k)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*path, i)) for i, v in enumerate(node)]
        return node

    tree = walk(params, ())
    if not found and all(isinstance(v, str | int | float | bool | None) for v in tree.values()):
        return FlatConstant(tree, True)
    return ParamsTemplate(tree, not found)


def _render(node: Any, variables: dict[str, Any], path: tuple[str | int, ...]) -> Any:
    if isinstance(node, _Compiled):
        token = _steps.set([MAX_STEPS])
        try:
            out = _render_bounded(node.template, variables)
        except TemplateError as exc:
            raise TemplateProblem(f"template error: {exc.message or exc}", path) from None
        except Exception as exc:  # noqa: BLE001 - a filter raising on bad input, e.g. int('x')
            raise TemplateProblem(f"template error: {type(exc).__name__}: {exc}", path) from None
        finally:
            _steps.reset(token)
        return out
    if isinstance(node, dict):
        return {k: _render(v, variables, (*path, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_render(v, variables, (*path, i)) for i, v in enumerate(node)]
    return node


def _render_bounded(template: Any, variables: dict[str, Any]) -> str:
    """Render piece by piece, stopping as soon as the output passes ``MAX_OUTPUT_CHARS``."""
    pieces: list[str] = []
    length = 0
    for piece in template.root_render_func(template.new_context(variables)):
        length += len(piece)
        if length > MAX_OUTPUT_CHARS:
            _refuse(f"rendered value longer than {MAX_OUTPUT_CHARS:,} characters")
        pieces.append(piece)
    return "".join(pieces)


def _copy(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_copy(v) for v in node]
    return node
