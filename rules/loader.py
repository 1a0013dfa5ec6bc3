"""YAML (and JSON) resource files → documents with line/column of every field, and located errors.

PyYAML's composer gives node marks; documents are built from the nodes here so every field path
knows where it was written. Scalars follow the YAML 1.2 core schema (``on:`` is a key, not
``true``; dates stay strings). Duplicate keys, merge keys and custom tags are errors. Files over
``MAX_FILE_BYTES`` are refused before parsing. Every error is ``file:line:col: field: message``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rules.limits import MAX_DEPTH
from rules.model import Resource
from rules.validate import Issue, format_path, validate_document

MAX_FILE_BYTES = 1_048_576
MAX_NODES = 100_000
MAX_DOCUMENTS = 500

Position = tuple[int, int]  # 1-based line, column
_STD = "tag:yaml.org,2002:"
_NULL = re.compile(r"^(~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$")
_INT_OCT = re.compile(r"^0o[0-7]+$")
_INT_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_SPECIAL_FLOAT = {".inf": float("inf"), "+.inf": float("inf"), "-.inf": float("-inf"), ".nan": float("nan")}


@dataclass(frozen=True)
class ResourceError:
    """One located problem: ``file:line:col: field: message``."""

    file: str
    line: int
    column: int
    field: str
    message: str
    document: int = 0  # 0-based index of the document in the file

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.file}:{self.line}:{self.column}: {where}{self.message}"

    def as_dict(self) -> dict[str, Any]:
        """JSON form for API responses."""
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "message": self.message,
            "document": self.document,
        }


@dataclass
class LoadedDocument:
    """One document of a file: its data, the resource (when valid), its errors and field positions."""

    index: int
    data: Any
    resource: Resource | None
    errors: list[ResourceError]
    positions: dict[tuple, Position] = field(default_factory=dict, repr=False)
    key_positions: dict[tuple, Position] = field(default_factory=dict, repr=False)


@dataclass
class LoadResult:
    """Every document of a file and every error (file-level errors have no document)."""

    file: str
    documents: list[LoadedDocument]
    errors: list[ResourceError]

    @property
    def ok(self) -> bool:
        """No error anywhere in the file."""
        return not self.errors


class _Fail(Exception):
    def __init__(self, message: str, mark: yaml.Mark | None, path: tuple = ()) -> None:
        super().__init__(message)
        self.message, self.mark, self.path = message, mark, path


class _Builder:
    """Builds Python data from a composed node, recording the position of every path."""

    def __init__(self) -> None:
        self.nodes = 0
        self.positions: dict[tuple, Position] = {}
        self.key_positions: dict[tuple, Position] = {}

    def build(self, node: yaml.Node, path: tuple) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Fail(
                f"document too large: more than {MAX_NODES} YAML nodes (aliases included)", node.start_mark
            )
        if len(path) > MAX_DEPTH:
            raise _Fail(f"nested deeper than {MAX_DEPTH} levels", node.start_mark, path[:MAX_DEPTH])
        self.positions[path] = _pos(node.start_mark)
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise _Fail("mapping keys must be plain strings", key_node.start_mark, path)
                key = key_node.value
                if key == "<<" and key_node.tag == _STD + "merge":
                    raise _Fail("YAML merge keys (<<) are not supported", key_node.start_mark, path)
                if key in out:
                    first = self.key_positions[(*path, key)]
                    raise _Fail(
                        f"duplicate key {key!r} (first at line {first[0]})", key_node.start_mark, path
                    )
                self.key_positions[(*path, key)] = _pos(key_node.start_mark)
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return _scalar(node, path)


def _pos(mark: yaml.Mark | None) -> Position:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


def _scalar(node: yaml.ScalarNode, path: tuple) -> Any:
    value = node.value
    if not node.tag.startswith(_STD):
        raise _Fail(f"unsupported YAML tag {node.tag!r}", node.start_mark, path)
    if node.style is not None or node.tag == _STD + "str":
        return value
    if _NULL.match(value):
        return None
    if value in _BOOL:
        return _BOOL[value]
    if _INT.match(value):
        return int(value)
    if _INT_OCT.match(value):
        return int(value[2:], 8)
    if _INT_HEX.match(value):
        return int(value[2:], 16)
    if _FLOAT.match(value):
        return float(value)
    if value.lower() in _SPECIAL_FLOAT:
        return _SPECIAL_FLOAT[value.lower()]
    return value


def load_text(text: str | bytes, file: str = "<input>") -> LoadResult:
    """Parse and validate every document of a YAML (or JSON) text; nothing is stored."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_FILE_BYTES:
        error = ResourceError(
            file, 1, 1, "", f"file is {size:,} bytes; at most {MAX_FILE_BYTES:,} are accepted"
        )
        return LoadResult(file, [], [error])
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            return LoadResult(file, [], [ResourceError(file, 1, 1, "", f"not UTF-8 text: {exc.reason}")])
    too_deep = _flow_too_deep(text)
    if too_deep is not None:
        line = text.count("\n", 0, too_deep) + 1
        column = too_deep - text.rfind("\n", 0, too_deep)
        return LoadResult(file, [], [ResourceError(file, line, column, "", f"nested deeper than {MAX_DEPTH} levels")])
    documents: list[LoadedDocument] = []
    errors: list[ResourceError] = []
    index = 0
    try:
        for node in yaml.compose_all(text, Loader=yaml.SafeLoader):
            if node is None:
                continue
            if index >= MAX_DOCUMENTS:
                errors.append(
                    ResourceError(
                        file,
                        _pos(node.start_mark)[0],
                        1,
                        "",
                        f"too many documents: at most {MAX_DOCUMENTS} per file",
                        index,
                    )
                )
                break
            builder = _Builder()
            try:
                data = builder.build(node, ())
            except _Fail as fail:
                line, col = _pos(fail.mark)
                error = ResourceError(
                    file, line, col, format_path(fail.path) if fail.path else "", fail.message, index
                )
                errors.append(error)
                documents.append(LoadedDocument(index, None, None, [error]))
                index += 1
                continue
            doc = _validate(data, file, index, builder)
            documents.append(doc)
            errors.extend(doc.errors)
            index += 1
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = _pos(mark)
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        errors.append(ResourceError(file, line, col, "", f"YAML syntax error: {problem}", index))
    except yaml.YAMLError as exc:
        errors.append(ResourceError(file, 1, 1, "", f"YAML error: {exc}", index))
    except RecursionError:  # PyYAML composes recursively: a few hundred levels exhaust the stack
        errors.append(ResourceError(file, 1, 1, "", f"YAML error: nested deeper than {MAX_DEPTH} levels", index))
    if not documents and not errors:
        errors.append(ResourceError(file, 1, 1, "", "no resource in file"))
    return LoadResult(file, documents, errors)


_FLOW = re.compile(r"""[\[\]{}]|"(?:[^"\\]|\\.)*"|'[^']*'""")


def _flow_too_deep(text: str) -> int | None:
    """Offset of a ``[``/``{`` nested deeper than ``MAX_DEPTH``, else None (quoted strings skipped).

    Checked before PyYAML sees the text: its scanner takes quadratic time in the nesting of flow
    collections (a thousand ``[`` took seconds).
    """
    depth = 0
    for match in _FLOW.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return match.start()
        elif token in "]}":
            depth = max(depth - 1, 0)
    return None


def load_data(data: Any, file: str = "<body>") -> LoadResult:
    """Validate an already parsed document (a JSON body); errors carry the field, line 1 col 1."""
    if isinstance(data, list):
        docs = [_validate(item, file, i, None) for i, item in enumerate(data)]
    else:
        docs = [_validate(data, file, 0, None)]
    return LoadResult(file, docs, [e for d in docs for e in d.errors])


def load_json_text(text: str | bytes, file: str = "<body>") -> LoadResult:
    """A JSON body: parsed with line/column tracking (JSON is YAML), or plainly if YAML cannot read it."""
    result = load_text(text, file)
    if result.documents or not result.errors or "YAML" not in result.errors[0].message:
        return result
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return LoadResult(
            file, [], [ResourceError(file, exc.lineno, exc.colno, "", f"JSON syntax error: {exc.msg}")]
        )
    except RecursionError:
        return LoadResult(file, [], [ResourceError(file, 1, 1, "", f"nested deeper than {MAX_DEPTH} levels")])
    return load_data(data, file)


def load_path(path: str | Path) -> LoadResult:
    """Read and validate a file (checking its size before reading it whole)."""
    path = Path(path)
    name = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            return LoadResult(
                name,
                [],
                [
                    ResourceError(
                        name, 1, 1, "", f"file is {size:,} bytes; at most {MAX_FILE_BYTES:,} are accepted"
                    )
                ],
            )
        raw = path.read_bytes()
    except OSError as exc:
        return LoadResult(name, [], [ResourceError(name, 1, 1, "", f"cannot read file: {exc.strerror}")])
    return load_text(raw, name)


def _validate(data: Any, file: str, index: int, builder: _Builder | None) -> LoadedDocument:
    resource, issues = validate_document(data)
    positions = builder.positions if builder else {}
    key_positions = builder.key_positions if builder else {}
    errors = [_locate(issue, file, index, positions, key_positions) for issue in issues]
    return LoadedDocument(index, data, resource if not issues else None, errors, positions, key_positions)


def _locate(issue: Issue, file: str, index: int, positions: dict, key_positions: dict) -> ResourceError:
    path = issue.path
    found: Position | None = None
    if issue.at_key:
        found = key_positions.get(path)
    while found is None and path:
        found = positions.get(path) or key_positions.get(path)
        if found is None:
            path = path[:-1]
    if found is None:
        found = positions.get((), (1, 1))
    line, col = found
    message = issue.message
    if issue.column_offset is not None:
        message = f"{message} (at column {issue.column_offset} of the expression)"
    return ResourceError(file, line, col, format_path(issue.path) if issue.path else "", message, index)
