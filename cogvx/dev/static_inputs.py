"""A check of a predictor's static Inputs: what the Go CLI's parser reads from the source.

`static_input_problems()` walks a predictor's AST and reports every Input that the Go CLI's static
parser (pkg/schema/python) would silently drop or read differently.
"""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path
from typing import Any, cast

# The Go CLI (pkg/schema/python) reads Inputs from the syntax tree without running the code:
#  - ge/le/min_length/max_length: strconv.ParseFloat of the argument's source text, else dropped;
#  - strings: the text between the outer quotes, unescaped, so implicit concatenation, escapes
#    and f/b/u prefixes are misread or dropped;
#  - default: a literal (a tuple silently loses unparsable items) or a same-file module constant,
#    else silently None; choices: a list literal, a same-file list/tuple constant, A + B or
#    list(D.keys()/values()), else the build fails; positional Input() arguments are ignored;
#  - `x: int = Input(default=None)` is REQUIRED (None is no default for a non-Optional type);
#  - Input(...) counts as a run() parameter default or as a class attribute used as `Cls.name`.
# The checker emulates those rules and compares the result with Python's own value.

_FAIL = object()
_NUMERIC_KWARGS = ("ge", "le", "min_length", "max_length")
_TYPES = {"str", "int", "float", "bool", "Path", "File", "Secret", "Any", "dict", "Dict"}
_DIGITS = r"\d(?:_?\d)*"
_GO_FLOAT = re.compile(
    rf"[+-]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})(?:[eE][+-]?{_DIGITS})?"
)
_GO_INT = re.compile(
    r"[+-]?(?:0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+|0(?:_?[0-7])*|"
    r"[1-9](?:_?\d)*)"
)


def _go_float(text: str) -> Any:
    """Emulate Go's strconv.ParseFloat(text, 64)."""
    text = text.strip()
    return float(text.replace("_", "")) if _GO_FLOAT.fullmatch(text) else _FAIL


def _go_int(text: str) -> Any:
    """Emulate Go's strconv.ParseInt(text, 0, 64) (0x/0o/0b prefixes, '_' separators)."""
    text = text.strip()
    if not _GO_INT.fullmatch(text):
        return _FAIL
    body = text.lstrip("+-").replace("_", "").lower()
    value = int(body, 0) if body[1:2].isalpha() else int(body, 8 if body[0] == "0" else 10)
    value = -value if text.startswith("-") else value
    return value if -(2**63) <= value < 2**63 else _FAIL


def _go_string(text: str) -> Any:
    """Emulate the Go parser's parseStringLiteral: strip the outer quotes, keep the rest as is."""
    if text[:3] in ('"""', "'''"):
        return text[3:-3] if len(text) >= 6 else _FAIL
    if text[:1] in ('"', "'"):
        return text[1:-1]
    if text[:2] in ('r"', "r'"):
        return text[2:-1]
    return _FAIL


def _same(a: Any, b: Any) -> bool:
    """Equality that also compares types (True is not 1, 1 is not 1.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


class _Unknown(Exception):
    """Python's value of an expression is not known statically."""


def _name(node: ast.AST) -> str:
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


class _StaticChecker:
    """Walks one predictor file; `problems` collects one line per issue."""

    def __init__(self, source: str, path: str) -> None:
        self.raw = source.encode()
        self.path = path
        self.lines = [0]
        for line in self.raw.splitlines(keepends=True):
            self.lines.append(self.lines[-1] + len(line))
        self.problems: list[tuple[int, str]] = []
        self.input_names = {"Input"}
        self.imported: dict[str, str] = {}
        self.scope: dict[str, tuple[Any, ast.expr]] = {}  # Go's module scope: name -> (value, node)
        self.last_bind: dict[str, ast.AST] = {}  # Python's last top-level binding of each name
        self.registry: dict[str, ast.Call] = {}  # "Cls.attr" -> Input(...) class attribute
        self.seen_calls: set[int] = set()

    # -- source text ------------------------------------------------------------------------
    def _pos(self, lineno: int, col: int) -> int:
        return self.lines[lineno - 1] + col

    def text(self, node: Any) -> str:
        start = self._pos(node.lineno, node.col_offset)
        return self.raw[start : self._pos(node.end_lineno, node.end_col_offset)].decode()

    def arg_text(self, kw: ast.keyword) -> str:
        """A keyword argument's value as the Go parser sees it (enclosing parentheses kept)."""
        return self.text(kw).split("=", 1)[1].strip()

    def in_parens(self, node: Any, container: Any) -> bool:
        """Whether an element sits in its own parentheses (Go: a parenthesized_expression)."""
        pos = self._pos(node.lineno, node.col_offset) - 1
        while pos > 0 and self.raw[pos : pos + 1].isspace():
            pos -= 1
        if self.raw[pos : pos + 1] != b"(":
            return False
        return not isinstance(container, ast.Tuple) or pos != self._pos(
            container.lineno, container.col_offset
        )

    def report(self, node: Any, what: str, message: str) -> None:
        self.problems.append((node.lineno, f"{self.path}:{node.lineno}: {what}: {message}"))

    # -- values -----------------------------------------------------------------------------
    def go_value(self, node: ast.AST, container: ast.AST | None = None) -> Any:
        """Emulate parseDefaultValue: the literal the Go parser reads, or _FAIL."""
        if container is not None and self.in_parens(node, container):
            return _FAIL
        if isinstance(node, ast.Constant):
            v = node.value
            if v is None or isinstance(v, bool):
                return v
            parse = {int: _go_int, float: _go_float, str: _go_string}.get(type(v))
            return parse(self.text(node)) if parse else _FAIL
        if isinstance(node, ast.JoinedStr):
            return _go_string(self.text(node))
        if isinstance(node, ast.UnaryOp):
            value = _go_int(self.text(node))
            return _go_float(self.text(node)) if value is _FAIL else value
        if isinstance(node, ast.List | ast.Set):
            items = [self.go_value(e, node) for e in node.elts]
            return _FAIL if any(i is _FAIL for i in items) else items
        if isinstance(node, ast.Tuple):
            if not self.text(node).startswith("("):
                return _FAIL  # `a, b` without parentheses is not a tuple node for Go
            return [i for i in (self.go_value(e, node) for e in node.elts) if i is not _FAIL]
        if isinstance(node, ast.Dict):
            pairs = [
                (self.go_value(k, node), self.go_value(v, node))
                for k, v in zip(node.keys, node.values, strict=True)
                if k is not None
            ]
            return {k: v for k, v in pairs if _FAIL not in (k, v)}
        return _FAIL

    def resolve(self, node: ast.AST) -> Any:
        """Emulate resolveDefaultExpr: a literal, else a same-file module constant."""
        value = self.go_value(node)
        if value is _FAIL and isinstance(node, ast.Name) and node.id in self.scope:
            return self.scope[node.id][0]
        return value

    def go_choices(self, node: ast.AST) -> Any:
        """Emulate parseListLiteral / resolveChoicesExpr."""
        if isinstance(node, ast.List):
            return self.go_value(node)
        if isinstance(node, ast.Name) and node.id in self.scope:
            value, source = self.scope[node.id]
            return value if isinstance(value, list) and not isinstance(source, ast.Set) else _FAIL
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            left, right = self.go_choices(node.left), self.go_choices(node.right)
            return _FAIL if _FAIL in (left, right) else left + right
        if not isinstance(node, ast.Call) or len(node.args) != 1:
            return _FAIL
        inner = node.args[0]
        if (
            _name(node.func) == "list"
            and isinstance(inner, ast.Call)
            and isinstance(inner.func, ast.Attribute)
            and inner.func.attr in ("keys", "values")
            and isinstance(inner.func.value, ast.Name)
        ):
            value = self.scope.get(inner.func.value.id, (_FAIL,))[0]
            if isinstance(value, dict):
                return list(value if inner.func.attr == "keys" else value.values())
        return _FAIL

    def py_value(self, node: ast.AST) -> Any:
        """Python's value of a static expression (tuples and sets as lists), else _Unknown."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str | int | float | None):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            v = self.py_value(node.operand)
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise _Unknown
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            return [self.py_value(e) for e in node.elts]
        if isinstance(node, ast.Dict) and None not in node.keys:
            pairs = zip(node.keys, node.values, strict=True)
            return {self.py_value(k): self.py_value(v) for k, v in pairs}  # type: ignore[arg-type]
        if isinstance(node, ast.Name):
            if node.id not in self.scope or self.scope[node.id][1] is not self.last_bind[node.id]:
                raise _Unknown  # rebound later, or not a literal: Go and Python may differ
            return self.py_value(self.scope[node.id][1])
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.py_value(node.left) + self.py_value(node.right)
        if isinstance(node, ast.Call) and _name(node.func) == "list" and len(node.args) == 1:
            inner = node.args[0]
            if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute):
                d = self.py_value(inner.func.value)
                if isinstance(d, dict) and inner.func.attr in ("keys", "values"):
                    return list(d if inner.func.attr == "keys" else d.values())
        raise _Unknown

    def unresolved(self, node: ast.AST, text: str) -> str:
        """Explain why the Go parser cannot read an expression."""
        if isinstance(node, ast.Name) and node.id in self.imported:
            return f"{node.id} is imported from {self.imported[node.id]} (invisible to the Go CLI)"
        if isinstance(node, ast.Name):
            return f"{node.id} is not a module-level literal constant of this file"
        if isinstance(node, ast.Tuple):
            return f"`{text}`: a tuple is not accepted here, write a list"
        return f"`{text}` is not a literal or a same-file module constant"

    def compare(self, kw: ast.keyword, what: str, go: Any, consequence: str) -> None:
        """Report when the Go CLI's reading of a keyword argument differs from Python's value."""
        text, node = self.arg_text(kw), kw.value
        try:
            py = self.py_value(node)
        except (_Unknown, TypeError):
            py = _FAIL
        if kw.arg in _NUMERIC_KWARGS and py is not _FAIL:
            py = float(py) if type(py) in (int, float) else _FAIL
        if go is _FAIL and kw.arg in _NUMERIC_KWARGS:
            reason = f"`{text}` is no decimal number literal (names are never resolved here)"
            self.report(kw, what, f"{kw.arg} {consequence}: {reason}")
        elif go is _FAIL:
            self.report(kw, what, f"{kw.arg} {consequence}: {self.unresolved(node, text)}")
        elif py is _FAIL:
            self.report(kw, what, f"{kw.arg}=`{text}` is not static; the Go CLI reads {go!r}")
        elif not _same(go, py):
            self.report(
                kw,
                what,
                f"{kw.arg}: the Go CLI reads {go!r}, Python has {py!r} (write one "
                "plain literal: no implicit concatenation, escapes or non-literal tuple items)",
            )

    # -- passes -----------------------------------------------------------------------------
    def collect(self, tree: ast.Module) -> None:
        """Imports, Go's module scope, Python's last bindings and the class-attribute Inputs."""
        for stmt in tree.body:
            if isinstance(stmt, ast.ImportFrom | ast.Import):
                for alias in stmt.names:
                    local = alias.asname or alias.name.split(".")[0]
                    self.imported[local] = getattr(stmt, "module", None) or alias.name
                    self.last_bind[local] = stmt
                    if getattr(stmt, "module", None) == "cog" and alias.name == "Input":
                        self.input_names.add(local)
            targets, value = [], None
            if isinstance(stmt, ast.Assign):
                targets, value = stmt.targets, stmt.value
            elif isinstance(stmt, ast.AnnAssign | ast.AugAssign) and stmt.value is not None:
                targets, value = [stmt.target], stmt.value
            simple = isinstance(stmt, ast.Assign | ast.AnnAssign) and len(targets) == 1
            for name in (n for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)):
                # simple implies the value is set (an AnnAssign without one has no targets)
                self.last_bind[name.id] = cast(ast.expr, value) if simple else stmt
            if simple and isinstance(targets[0], ast.Name):
                go = self.go_value(value)  # type: ignore[arg-type]
                if go is not _FAIL:
                    self.scope[targets[0].id] = (go, value)  # type: ignore[assignment]
            if isinstance(stmt, ast.ClassDef):
                for item in stmt.body:
                    target = (
                        getattr(item, "target", None)
                        or (getattr(item, "targets", None) or [None])[0]
                    )
                    value = getattr(item, "value", None)
                    if isinstance(target, ast.Name) and self.is_input_call(value):
                        self.registry[f"{stmt.name}.{target.id}"] = value  # type: ignore[assignment]

    def is_input_call(self, node: Any) -> bool:
        return (
            isinstance(node, ast.Call)
            and _name(node.func) in self.input_names
            and isinstance(node.func, ast.Name)
        )

    def check_input(self, call: ast.Call, what: str) -> Any:
        """Check one Input(...) call; return the default the Go CLI reads (_FAIL if none)."""
        self.seen_calls.add(id(call))
        if call.args:
            self.report(call, what, "positional Input() arguments are ignored by the Go CLI")
        default = _FAIL
        for kw in call.keywords:
            if kw.arg is None:
                self.report(call, what, "**kwargs in Input() are invisible to the Go CLI")
                continue
            text = self.arg_text(kw)
            wrapped = text != self.text(kw.value)
            if kw.arg == "default":
                default = _FAIL if wrapped else self.resolve(kw.value)
                self.compare(kw, what, default, "silently becomes None")
            elif kw.arg in _NUMERIC_KWARGS:
                go = _go_float(text)
                self.compare(kw, what, go, "is dropped")
                if kw.arg.endswith("length") and go is not _FAIL and (go < 0 or go % 1):
                    self.report(kw, what, f"{kw.arg}={text} must be a non-negative integer")
            elif kw.arg in ("description", "regex"):
                go = _go_string(text)
                if go is _FAIL and kw.arg == "description" and isinstance(kw.value, ast.Name):
                    go = self.scope.get(kw.value.id, (_FAIL,))[0]
                    go = go if isinstance(go, str) else _FAIL
                self.compare(kw, what, go, "is dropped")
            elif kw.arg == "choices":
                go = _FAIL if wrapped else self.go_choices(kw.value)
                self.compare(kw, what, go, "cannot be resolved (the build fails)")
            elif kw.arg == "deprecated" and text not in ("True", "False"):
                self.report(kw, what, f"deprecated={text} is dropped: write True or False")
            elif kw.arg == "default_factory":
                self.report(kw, what, "default_factory is rejected by the Go CLI")
        return default

    def optional(self, ann: ast.AST, inner: bool = False) -> tuple[bool, bool]:
        """Return (is Optional, is a type the Go CLI resolves) for an input annotation."""
        if isinstance(ann, ast.Name | ast.Attribute):
            return False, _name(ann) in _TYPES | ({"list", "List"} if not inner else set())
        none = [isinstance(a, ast.Constant) and a.value is None for a in ast.iter_child_nodes(ann)]
        if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr) and sum(none) == 1:
            other = ann.right if isinstance(ann.left, ast.Constant) else ann.left
            return True, not inner and self.optional(other, True) == (False, True)
        if not isinstance(ann, ast.Subscript):
            return False, False
        outer, args = _name(ann.value), getattr(ann.slice, "elts", [ann.slice])
        rest = [a for a in args if not (isinstance(a, ast.Constant) and a.value is None)]
        if outer == "Optional" or (outer == "Union" and len(args) == 2 and len(rest) == 1):
            return True, not inner and len(rest) == 1 and self.optional(rest[0], True)[1]
        if outer in ("List", "list") and len(args) == 1:
            return False, self.optional(args[0], True) == (False, True)
        if outer == "Annotated":
            return self.optional(args[0], inner)
        return False, outer in ("Dict", "dict")

    def check_run(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, cls: str) -> None:
        """Check every parameter of a run()/predict() method."""
        a = fn.args
        for p in a.posonlyargs + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
            self.report(p, f"{cls}.{fn.name}({p.arg})", "only plain parameters can be Inputs")
        params = a.args[1:] if a.args and a.args[0].arg == "self" else a.args
        defaults = [None] * (len(params) - len(a.defaults)) + list(a.defaults)
        if fn.returns is None:
            self.report(fn, f"{cls}.{fn.name}", "missing return annotation")
        for p, d in zip(params, defaults, strict=True):
            what = f"{cls}.{fn.name}({p.arg})"
            if p.annotation is None:
                self.report(p, what, "missing type annotation (the Go CLI fails the build)")
                self.seen_calls.add(id(d))
                continue
            optional, supported = self.optional(p.annotation)
            if not supported:
                self.report(
                    p, what, f"type `{self.text(p.annotation)}` is not resolved by the Go CLI"
                )
            if d is None:
                continue
            if self.is_input_call(d):
                default = self.check_input(d, what)  # type: ignore[arg-type]
            elif isinstance(d, ast.Attribute) and self.text(d) in self.registry:
                kws = [k for k in self.registry[self.text(d)].keywords if k.arg == "default"]
                default = self.resolve(kws[0].value) if kws else _FAIL
            elif isinstance(d, ast.Call | ast.Attribute):
                self.seen_calls.add(id(d))
                self.report(
                    d,
                    what,
                    f"`{self.text(d)}` is no Input for the Go CLI: call Input (from cog) "
                    "here or reference a same-file class attribute `Cls.name = Input(...)`",
                )
                continue
            else:
                default = self.resolve(d)
                try:
                    python = self.py_value(d)
                except _Unknown:
                    python = _FAIL
                if default is _FAIL or python is _FAIL or not _same(default, python):
                    self.report(
                        d,
                        what,
                        f"default `{self.text(d)}` is not a static literal "
                        f"(the Go CLI reads {'nothing' if default is _FAIL else repr(default)})",
                    )
                    continue
            if default is None and not optional and _name(p.annotation) != "Secret":
                self.report(
                    d,
                    what,
                    "default=None on a non-Optional type is a REQUIRED input for the "
                    "Go CLI: annotate Optional[...]",
                )

    def run(self, tree: ast.Module) -> list[str]:
        self.collect(tree)
        for key, call in self.registry.items():
            self.check_input(call, key)
        for cls in (c for c in tree.body if isinstance(c, ast.ClassDef)):
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and fn.name in (
                    "run",
                    "predict",
                ):
                    self.check_run(fn, cls.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and id(node) not in self.seen_calls:
                if self.is_input_call(node):
                    self.report(
                        node,
                        "Input",
                        "Input(...) here is invisible to the Go CLI: use it "
                        "as a run() parameter default or a class attribute",
                    )
                elif _name(node.func) == "Input":
                    self.report(
                        node,
                        "Input",
                        f"`{self.text(node.func)}(...)` is not recognized "
                        "by the Go CLI: use `from cog import Input`",
                    )
        return [msg for _, msg in sorted(set(self.problems))]


def static_input_problems(path: str | Path) -> list[str]:
    """List what the Go CLI's static parser would drop or misread in a predictor's Inputs."""
    path = Path(path)
    source = path.read_text()
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        return [f"{path}:{exc.lineno}: syntax error: {exc.msg}"]
    return _StaticChecker(source, str(path)).run(tree)
