"""A static upper bound on what evaluating a CEL condition costs, refused at apply time past a budget.

The ``cel`` binding exposes no syntax tree and no cost model, so this module parses the expression
itself (after ``cel.compile`` has accepted it) and bounds its cost in *units* of about 0.2 µs,
assuming every input value is as large as ``rules.limits`` allows — every event and opportunity
is checked against those limits where it enters the hub. Calibrated on the binding (measured,
2-core machine): one evaluation step ≈ 0.1–0.2 µs; copying a 64 KiB string out of the input ≈ 10 µs;
a scan of a 64 KiB string or a comparison of two 1,000-item lists ≈ 25–75 µs; a regular expression
is compiled on every call (≈ 10 µs) and runs ≈ 6 ns per character; ``map``/``filter`` copy their
result on every step (1,000 items ≈ 29 ms: quadratic).

The model, per node: one unit; a field or index of input data copies it (``COPY``); an operator or
function on input data may scan it whole (``SCAN``); a comprehension multiplies its body by the
items of its range (``MAX_ITEMS`` for input data), plus n²/6 for ``map``/``filter``. Work on the
iteration variable is charged once per comprehension, not per item: the items together are no
larger than the range. ``BUDGET`` units is ≈ 5 ms; anything estimated above it is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rules.limits import MAX_ITEMS

BUDGET = 25_000
COPY = 50
SCAN = 400
REGEX = 50 + 2_000  # compile, then run over a 64 KiB string
QUADRATIC_DIVISOR = 6
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
CHEAP_FUNCTIONS = frozenset(
    {"has", "type", "dyn", "bool", "getFullYear", "getMonth", "getDayOfYear", "getDayOfMonth", "getDate",
     "getDayOfWeek", "getHours", "getMinutes", "getSeconds", "getMilliseconds"}
)  # fmt: skip

_LEX = re.compile(
    r"""(?P<space>\s+|//[^\n]*)"""
    r"""|(?P<str>[rRbB]{0,2}(?:\"\"\"(?:[^\\]|\\.)*?\"\"\"|'''(?:[^\\]|\\.)*?'''|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'))"""
    r"""|(?P<num>0[xX][0-9a-fA-F]+[uU]?|\d+\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\d+[uU]?)"""
    r"""|(?P<ident>[A-Za-z_]\w*)"""
    r"""|(?P<op>&&|\|\||==|!=|<=|>=|\.\?|[-+*/%!<>?:.,()\[\]{}])"""
)
_RELATIONS = ("<", "<=", ">", ">=", "==", "!=", "in")
_LITERAL_IDENTS = frozenset({"true", "false", "null"})


class CostError(ValueError):
    """The expression's estimated cost is over the budget (or cannot be estimated); ``column`` is 1-based."""

    def __init__(self, message: str, column: int) -> None:
        super().__init__(message)
        self.message, self.column = message, column


@dataclass
class _Node:
    kind: str  # lit, ident, select, index, call, op, list, map, cond, macro
    column: int
    name: str = ""
    children: tuple[_Node, ...] = ()
    target: _Node | None = None  # receiver of a method call / operand of select, index, macro range
    var: str = ""  # a macro's iteration variable


@dataclass
class _Cost:
    per: int  # cost each time the node is evaluated
    once: int  # cost charged once per enclosing comprehension (work on the iteration variable)
    size: int  # how many maximal input values the result may hold (0: a constant or a scalar)
    items: int  # bound on the items of the result, were it a list or a map
    local: bool  # derived from iteration variables and constants only


def estimate(source: str) -> int:
    """The cost bound of an expression, in units; raises ``CostError`` above ``BUDGET``."""
    tree = _Parser(source).parse()
    cost = _Estimator().visit(tree, frozenset())
    total = cost.per + cost.once
    if total > BUDGET:
        worst = _costliest_macro(tree)
        where = f" (the {worst.name}() at column {worst.column})" if worst else ""
        raise CostError(
            f"CEL cost limit: up to {total:,} units{where} on inputs within the documented limits, "
            f"at most {BUDGET:,} (≈ 5 ms); iterate once over a list and compare its items with constants, "
            "or use exists()/all() instead of map()/filter()",
            worst.column if worst else 1,
        )
    return total


def _costliest_macro(tree: _Node) -> _Node | None:
    best: tuple[int, _Node] | None = None
    stack = [tree]
    while stack:
        node = stack.pop()
        if node.kind == "macro":
            cost = _Estimator().visit(node, frozenset())
            if best is None or cost.per + cost.once > best[0]:
                best = (cost.per + cost.once, node)
        stack.extend(node.children)
        if node.target is not None:
            stack.append(node.target)
    return best[1] if best else None


class _Parser:
    """Recursive descent over CEL's grammar (the expression is already known to be valid CEL)."""

    def __init__(self, source: str) -> None:
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(source):
            match = _LEX.match(source, pos)
            if match is None:
                raise CostError("CEL cost limit: cannot estimate the cost of this expression", pos + 1)
            if match.lastgroup != "space":
                self.tokens.append((match.lastgroup, match.group(), pos + 1))
            pos = match.end()
        self.tokens.append(("end", "", len(source) + 1))
        self.at = 0

    def parse(self) -> _Node:
        node = self.expr()
        self.expect("")
        return node

    def peek(self) -> str:
        kind, text, _ = self.tokens[self.at]
        return text if kind in ("op", "ident") else kind

    def take(self) -> tuple[str, str, int]:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def expect(self, text: str) -> None:
        kind, found, column = self.take()
        if (text or "end") != (found if kind != "end" else "end"):
            raise CostError(f"CEL cost limit: cannot estimate the cost of this expression near {found!r}", column)

    def expr(self) -> _Node:
        node = self.binary(0)
        if self.peek() == "?":
            column = self.take()[2]
            yes = self.binary(0)
            self.expect(":")
            return _Node("cond", column, children=(node, yes, self.expr()))
        return node

    _LEVELS = (("||",), ("&&",), _RELATIONS, ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> _Node:
        if level == len(self._LEVELS):
            return self.unary()
        node = self.binary(level + 1)
        while self.peek() in self._LEVELS[level]:
            _, op, column = self.take()
            node = _Node("op", column, op, (node, self.binary(level + 1)))
        return node

    def unary(self) -> _Node:
        if self.peek() in ("!", "-"):
            _, op, column = self.take()
            return _Node("op", column, "u" + op, (self.unary(),))
        return self.member()

    def member(self) -> _Node:
        node = self.primary()
        while True:
            if self.peek() in (".", ".?"):
                self.take()
                _, name, column = self.take()
                if self.peek() == "(":
                    args = self.arguments(")")
                    if name in MACROS and len(args) >= 2 and args[0].kind == "ident":
                        body = args[1:]
                        node = _Node("macro", column, name, tuple(body), node, args[0].name)
                    else:
                        node = _Node("call", column, name, tuple(args), node)
                else:
                    node = _Node("select", column, name, target=node)
            elif self.peek() == "[":
                column = self.take()[2]
                index = self.expr()
                self.expect("]")
                node = _Node("index", column, children=(index,), target=node)
            elif self.peek() == "{" and node.kind in ("ident", "select"):
                column = self.take()[2]
                node = _Node("map", column, children=tuple(self.entries("}", ":")))
            else:
                return node

    def primary(self) -> _Node:
        kind, text, column = self.take()
        if kind in ("str", "num") or text in _LITERAL_IDENTS:
            return _Node("lit", column, text)
        if kind == "ident":
            if self.peek() == "(":
                return _Node("call", column, text, tuple(self.arguments(")")))
            return _Node("ident", column, text)
        if text == ".":
            return self.primary()
        if text == "(":
            node = self.expr()
            self.expect(")")
            return node
        if text == "[":
            self.at -= 1
            return _Node("list", column, children=tuple(self.arguments("]")))
        if text == "{":
            return _Node("map", column, children=tuple(self.entries("}", ":")))
        raise CostError(f"CEL cost limit: cannot estimate the cost of this expression near {text!r}", column)

    def arguments(self, close: str) -> list[_Node]:
        self.take()  # the opening bracket
        out: list[_Node] = []
        while self.peek() != close:
            out.append(self.expr())
            if self.peek() != ",":
                break
            self.take()
        self.expect(close)
        return out

    def entries(self, close: str, sep: str) -> list[_Node]:
        out: list[_Node] = []
        while self.peek() != close:
            out.append(self.expr())
            self.expect(sep)
            out.append(self.expr())
            if self.peek() != ",":
                break
            self.take()
        self.expect(close)
        return out


_CONSTANT = _Cost(1, 0, 0, 0, True)


class _Estimator:
    """Cost of a node given the iteration variables in scope (``local``)."""

    def visit(self, node: _Node, local: frozenset[str]) -> _Cost:
        return getattr(self, f"_{node.kind}")(node, local)

    def _lit(self, node: _Node, local: frozenset[str]) -> _Cost:
        return _CONSTANT

    def _ident(self, node: _Node, local: frozenset[str]) -> _Cost:
        if node.name in local:
            return _Cost(1, 0, 1, MAX_ITEMS, True)
        return _Cost(1, 0, 1, MAX_ITEMS, False)

    def _charge(self, base: int, work: int, parts: list[_Cost], size: int, items: int) -> _Cost:
        """``work`` (per maximal input value) on the data of ``parts``: once if all local, else each time."""
        per = base + sum(p.per for p in parts)
        once = sum(p.once for p in parts)
        local = all(p.local for p in parts)
        data = sum(p.size for p in parts)
        if local:
            once += work * data
        else:
            per += work * max(data, 1)
        return _Cost(per, once, size, items, local)

    def _select(self, node: _Node, local: frozenset[str]) -> _Cost:
        target = self.visit(node.target, local)
        return self._charge(1, COPY, [target], target.size, MAX_ITEMS)

    def _index(self, node: _Node, local: frozenset[str]) -> _Cost:
        target, index = self.visit(node.target, local), self.visit(node.children[0], local)
        return self._charge(1, COPY, [target, index], target.size, MAX_ITEMS)

    def _call(self, node: _Node, local: frozenset[str]) -> _Cost:
        parts = [self.visit(c, local) for c in (*((node.target,) if node.target else ()), *node.children)]
        if node.name == "matches":
            pattern = node.children[-1] if node.children else None
            if pattern is None or pattern.kind != "lit":
                raise CostError("CEL cost limit: matches() takes a string literal as its pattern", node.column)
            return self._charge(1, REGEX, parts, 0, 0)
        work = 0 if node.name in CHEAP_FUNCTIONS else SCAN
        if node.name == "size":
            work = SCAN  # counts the characters of a string
        return self._charge(1, work, parts, 0, 0)

    def _op(self, node: _Node, local: frozenset[str]) -> _Cost:
        parts = [self.visit(c, local) for c in node.children]
        if node.name in ("&&", "||", "u!", "u-", "*", "/", "%", "-"):
            cost = self._charge(1, 0, parts, 0, 0)
            cost.size = 0
            return cost
        if node.name == "+":  # numbers, or strings/lists concatenated
            return self._charge(1, SCAN, parts, sum(p.size for p in parts), sum(p.items for p in parts))
        return self._charge(1, SCAN, parts, 0, 0)  # comparisons and ``in`` may walk both sides

    def _list(self, node: _Node, local: frozenset[str]) -> _Cost:
        parts = [self.visit(c, local) for c in node.children]
        return self._charge(1, 0, parts, sum(p.size for p in parts), len(parts))

    def _map(self, node: _Node, local: frozenset[str]) -> _Cost:
        parts = [self.visit(c, local) for c in node.children]
        return self._charge(1, 0, parts, sum(p.size for p in parts), len(parts) // 2)

    def _cond(self, node: _Node, local: frozenset[str]) -> _Cost:
        test, yes, no = (self.visit(c, local) for c in node.children)
        return _Cost(
            test.per + max(yes.per, no.per) + 1,
            test.once + max(yes.once, no.once),
            max(yes.size, no.size),
            max(yes.items, no.items),
            test.local and yes.local and no.local,
        )

    def _macro(self, node: _Node, local: frozenset[str]) -> _Cost:
        over = self.visit(node.target, local)
        n = max(over.items, 1)
        body = [self.visit(c, local | {node.var}) for c in node.children]
        per_item = 1 + sum(b.per for b in body)
        once = sum(b.once for b in body) * max(over.size, 1)
        total = over.per + n * per_item + once
        size, items = 0, 0
        if node.name in ("map", "filter"):
            total += n * n // QUADRATIC_DIVISOR
            size, items = over.size + sum(b.size for b in body) * n, n
        if over.local:
            return _Cost(total, over.once, size, items, True)
        return _Cost(total + over.once, 0, size, items, False)
