"""A static check of the product's TensorRT API uses against TensorRT 10.13's published Python API.

The API surface is the ``.pyi`` of ``tensorrt-stubs==10.13.0.35.1`` (pybind11-stubgen output of the
TensorRT 10.13.0.35 bindings, MIT), which scripts/setup_venv.sh installs into the side folder
``.venv/tensorrt-stubs`` -- never on sys.path (in site-packages its ``tensorrt/`` would look like
TensorRT to ``find_spec``). Nothing here imports TensorRT or the stubs: both sides are read with ``ast``.

``load_stub`` parses ``tensorrt_bindings/tensorrt.pyi`` (and, where present beside it, the package
``__init__.pyi`` files that add ``nptype``, ``volume``, ``__version__``). ``check_source`` walks a
product file: names bound to the tensorrt module (a ``trt`` variable/parameter, ``import tensorrt``,
``x = import_tensorrt()``), variables and ``self.``-attributes holding TensorRT objects (inferred
from stub return types, else from ``NAME_MAP`` / ``ATTR_MAP``), and checks every attribute on them,
every constant-name ``getattr``/``hasattr``, every keyword argument of a call it can resolve and
every method a subclass of a TensorRT class defines. Only the test suite uses this module.
"""

from __future__ import annotations

import ast
import keyword
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
STUB_PIN = "tensorrt-stubs==10.13.0.35.1"
STUB_ENV = "BATCHFORGE_TRT_STUBS"
DEFAULT_STUB = REPO / ".venv" / "tensorrt-stubs" / "tensorrt_bindings" / "tensorrt.pyi"
NOT_PUBLISHED = "not in TensorRT 10.13's published API"

# The files that hold the product's TensorRT code; any other non-test file that imports tensorrt
# (or calls import_tensorrt()) is found by ``tensorrt_files``.
TENSORRT_FILES = ("engines/tensorrt_builder.py", "runtime/runners/tensorrt.py", "engines/commands.py")
MODULE_NAME = "tensorrt"

# Variable / parameter names that hold TensorRT objects where no stub return type says so (a
# parameter, or the result of a product helper such as make_logger). An assignment whose value
# resolves through the stub (trt.Builder(...), builder.create_network(...)) wins over this map.
# ``config`` is deliberately absent: in engines/ it is batchforge's BuildConfig (TensorRT's is ``cfg``).
NAME_MAP: Mapping[str, str] = {
    "trt": MODULE_NAME,
    "builder": "Builder",
    "network": "INetworkDefinition",
    "cfg": "IBuilderConfig",
    "parser": "OnnxParser",
    "error": "ParserError",  # _describe_parser_error(error): a parser.get_error(i)
    "profile": "IOptimizationProfile",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "runtime": "Runtime",
    "logger": "ILogger",
    "inspector": "IEngineInspector",
    "serialized": "IHostMemory",
    "cache": "ITimingCache",
    "trt_dtype": "DataType",
}
# ``<object>.<attr>`` whose object is not itself a TensorRT object: the runner's ``self._engine``
# etc. and the pooled ``_ExecState.context`` (``state.context``).
ATTR_MAP: Mapping[str, str] = {
    "_trt": MODULE_NAME,
    "_runtime": "Runtime",
    "_engine": "ICudaEngine",
    "_logger": "ILogger",
    "context": "IExecutionContext",
}

MODULE_DUNDERS = frozenset({"__name__", "__file__", "__path__", "__spec__", "__loader__", "__package__",
                            "__doc__", "__dict__", "__all__"})
OBJECT_ATTRS = frozenset(dir(object)) | {"__name__", "__qualname__", "__module__", "__dict__", "__members__"}
SKIP_DIRS = frozenset({"tests", "build", "dist", "artifacts", "samples", "reports", "htmlcov", "__pycache__"})


# -- the stub -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Signature:
    params: frozenset[str]  # the names a keyword argument may use
    var_kw: bool
    returns: ast.expr | None


@dataclass
class StubClass:
    name: str  # qualified: "ILogger.Severity"
    bases: list[str] = field(default_factory=list)
    methods: dict[str, list[Signature]] = field(default_factory=dict)
    properties: dict[str, ast.expr | None] = field(default_factory=dict)
    attributes: dict[str, ast.expr | None] = field(default_factory=dict)  # annotated/assigned, enum members
    nested: dict[str, str] = field(default_factory=dict)  # member name -> qualified class name


@dataclass
class StubAPI:
    path: Path
    classes: dict[str, StubClass]
    functions: dict[str, list[Signature]]
    constants: dict[str, ast.expr | None]
    imported: set[str]  # other module-level names (re-exported modules and helpers)

    @property
    def module_names(self) -> set[str]:
        top = {n for n in self.classes if "." not in n}
        return top | set(self.functions) | set(self.constants) | self.imported

    def mro(self, name: str) -> Iterator[StubClass]:
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop(0)
            if current in seen or current not in self.classes:
                continue
            seen.add(current)
            cls = self.classes[current]
            yield cls
            todo.extend(cls.bases)

    def member(self, cls: str, name: str) -> tuple[str, StubClass] | None:
        """``(kind, defining class)`` of ``cls.name``: kind is method, property, attribute or nested."""
        for c in self.mro(cls):
            for kind, table in (("method", c.methods), ("property", c.properties),
                                ("attribute", c.attributes), ("nested", c.nested)):
                if name in table:
                    return kind, c
        return None


def stub_path() -> Path:
    """``BATCHFORGE_TRT_STUBS`` (the .pyi, the tensorrt_bindings folder or the --target folder), else .venv's."""
    env = os.environ.get(STUB_ENV)
    if not env:
        return DEFAULT_STUB
    path = Path(env)
    if path.is_dir():
        for candidate in (path / "tensorrt_bindings" / "tensorrt.pyi", path / "tensorrt.pyi"):
            if candidate.is_file():
                return candidate
        return path / "tensorrt_bindings" / "tensorrt.pyi"
    return path


def _split_top(text: str, sep: str) -> list[str]:
    """``text`` split at ``sep`` outside brackets and quotes."""
    parts, current, depth, quote = [], [], 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _repair_def(line: str) -> str | None:
    """pybind11-stubgen writes a few signatures Python cannot parse: a parameter named ``in``, and
    a parameter without default after defaulted ones (``add_scale_nd``). Renames the first
    (``in_``) and gives the second ``= ...``; the parameter names are all this check reads."""
    m = re.match(r"^(\s*def \w+\()(.*)(\)\s*(?:->.*)?:\s*(?:\.\.\.)?\s*)$", line)
    if not m:
        return None
    out, defaulted = [], False
    for part in _split_top(m.group(2), ","):
        name = re.match(r"(\s*)(\w+)(.*)$", part, re.S)
        if name and keyword.iskeyword(name.group(2)):
            part = f"{name.group(1)}{name.group(2)}_{name.group(3)}"
        stripped = part.strip()
        if stripped.startswith("*"):
            defaulted = False
        elif stripped and stripped != "/":
            if len(_split_top(part, "=")) > 1:
                defaulted = True
            elif defaulted:
                part += " = ..."
        out.append(part)
    repaired = m.group(1) + ",".join(out) + m.group(3)
    return repaired if repaired != line else None


def parse_stub_source(text: str, filename: str) -> ast.Module:
    lines = text.splitlines()
    for _ in range(100):
        try:
            return ast.parse("\n".join(lines), filename)
        except SyntaxError as exc:
            index = (exc.lineno or 0) - 1
            repaired = _repair_def(lines[index]) if 0 <= index < len(lines) else None
            if repaired is None:
                raise
            lines[index] = repaired
    raise SyntaxError(f"{filename}: too many unparsable signatures")


def _signature(fn: ast.FunctionDef, *, bound: bool) -> Signature:
    args = list(fn.args.args)
    if bound and args and not any(ast.unparse(d).endswith("staticmethod") for d in fn.decorator_list):
        args = args[1:]  # self
    names = {a.arg.rstrip("_") if keyword.iskeyword(a.arg.rstrip("_")) else a.arg for a in args}
    names |= {a.arg for a in fn.args.kwonlyargs}
    return Signature(frozenset(names), fn.args.kwarg is not None, fn.returns)


def _dotted(expr: ast.expr) -> str | None:
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        base = _dotted(expr.value)
        return f"{base}.{expr.attr}" if base else None
    return None


def _class_from(classes: Mapping[str, object], dotted: str | None) -> str | None:
    """``tensorrt.DataType`` / ``tensorrt_bindings.tensorrt.ILogger.Severity`` -> the stub class name."""
    if not dotted:
        return None
    for prefix in ("tensorrt_bindings.tensorrt.", "tensorrt.", "tensorrt_bindings."):
        if dotted.startswith(prefix) and dotted[len(prefix):] in classes:
            return dotted[len(prefix):]
    return dotted if dotted in classes else None


def _read_class(node: ast.ClassDef, qual: str, classes: dict[str, StubClass]) -> None:
    cls = StubClass(qual)
    classes[qual] = cls
    cls.bases = [b for b in (_dotted(x) for x in node.bases) if b]
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            decorators = [ast.unparse(d) for d in item.decorator_list]
            if "property" in decorators:
                cls.properties[item.name] = item.returns
            elif any(d.endswith(".setter") or d.endswith(".deleter") for d in decorators):
                continue
            else:
                cls.methods.setdefault(item.name, []).append(_signature(item, bound=True))
        elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            cls.attributes[item.target.id] = item.annotation
        elif isinstance(item, ast.Assign):
            for target in item.targets:
                if isinstance(target, ast.Name):
                    cls.attributes[target.id] = None
        elif isinstance(item, ast.ClassDef):
            cls.nested[item.name] = f"{qual}.{item.name}"
            _read_class(item, f"{qual}.{item.name}", classes)


@lru_cache(maxsize=4)
def load_stub(path: Path) -> StubAPI:
    """The API of ``tensorrt.pyi`` (+ the ``__init__.pyi`` of tensorrt_bindings and tensorrt beside it)."""
    tree = parse_stub_source(path.read_text(encoding="utf-8"), str(path))
    classes: dict[str, StubClass] = {}
    functions: dict[str, list[Signature]] = {}
    constants: dict[str, ast.expr | None] = {}
    imported: set[str] = set()
    inits = [p for p in (path.parent / "__init__.pyi", path.parent.parent / "tensorrt" / "__init__.pyi")
             if p.is_file()]
    trees = [tree, *(parse_stub_source(p.read_text(encoding="utf-8"), str(p)) for p in inits)]
    for module in trees:
        for node in module.body:
            if isinstance(node, ast.ClassDef):
                _read_class(node, node.name, classes)
            elif isinstance(node, ast.FunctionDef):
                functions.setdefault(node.name, []).append(_signature(node, bound=False))
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                constants[node.target.id] = node.annotation
            elif isinstance(node, ast.Assign):
                constants.update({t.id: None for t in node.targets if isinstance(t, ast.Name)})
            elif isinstance(node, ast.Import | ast.ImportFrom):
                imported.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
    for cls in classes.values():
        cls.bases = [b for b in (_class_from(classes, x) for x in cls.bases) if b]
    imported -= {"annotations"}
    return StubAPI(path, classes, functions, constants, imported)


# -- the product side -----------------------------------------------------------------------------
class T(NamedTuple):
    """What an expression is: the module, a stub class object, an instance, a function or a method."""

    kind: str  # module | class | inst | func | method
    cls: str = ""
    member: str = ""


MODULE = T("module")


@dataclass(frozen=True)
class Use:
    file: str
    line: int
    name: str  # "Builder.create_network", "tensorrt.Builder", "IBuilderConfig.set_flag(flag=)"
    ok: bool

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.name} — {NOT_PUBLISHED}"


@dataclass(frozen=True)
class Dynamic:
    """A ``getattr``/``hasattr`` on a TensorRT object with a computed name: not checkable statically."""

    file: str
    line: int
    expr: str  # "getattr(trt.HardwareCompatibilityLevel, config.hardware_compat.trt_name)"

    @property
    def key(self) -> str:
        return f"{self.file}: {self.expr}"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.expr} — a computed name, not checkable against the stub"


@dataclass
class Report:
    uses: list[Use] = field(default_factory=list)
    dynamic: list[Dynamic] = field(default_factory=list)

    @property
    def missing(self) -> list[Use]:
        return sorted((u for u in self.uses if not u.ok), key=lambda u: (u.file, u.line, u.name))

    @property
    def checked_names(self) -> set[str]:
        return {u.name for u in self.uses}

    def extend(self, other: Report) -> None:
        self.uses += other.uses
        self.dynamic += other.dynamic


class _Scope:
    def __init__(self, parent: _Scope | None) -> None:
        self.parent = parent
        self.names: dict[str, T | None] = {}

    def lookup(self, name: str) -> T | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.names:
                return scope.names[name]
            scope = scope.parent
        return None


def _as_type(name: str | None) -> T | None:
    if name is None:
        return None
    return MODULE if name == MODULE_NAME else T("inst", name)


class _Checker:
    def __init__(self, api: StubAPI, filename: str, allowed: Iterable[str]) -> None:
        self.api = api
        self.file = filename
        self.allowed = set(allowed)
        self.report = Report()
        self.attr_types: dict[str, T] = {}

    # resolution (pure) ------------------------------------------------------------------------
    def annotation_type(self, expr: ast.expr | None) -> T | None:
        if expr is None:
            return None
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            try:
                return self.annotation_type(ast.parse(expr.value, mode="eval").body)
            except SyntaxError:
                return None
        if isinstance(expr, ast.Subscript):  # typing.ClassVar[X], typing.Optional[X]
            return self.annotation_type(expr.slice)
        if isinstance(expr, ast.BinOp):  # X | None
            return self.annotation_type(expr.left) or self.annotation_type(expr.right)
        name = _class_from(self.api.classes, _dotted(expr))
        return T("inst", name) if name else None

    def member_type(self, owner: T, name: str) -> T | None:
        if owner.kind == "module":
            if name in self.api.classes:
                return T("class", name)
            if name in self.api.functions:
                return T("func", member=name)
            return self.annotation_type(self.api.constants.get(name))
        if owner.kind not in ("class", "inst"):
            return None
        found = self.api.member(owner.cls, name)
        if found is None:
            return None
        kind, cls = found
        if kind == "method":
            return T("method", owner.cls, name)
        if kind == "nested":
            return T("class", cls.nested[name])
        table = cls.properties if kind == "property" else cls.attributes
        return self.annotation_type(table[name])

    def signatures(self, callee: T) -> tuple[str, list[Signature]] | None:
        if callee.kind == "func":
            return f"tensorrt.{callee.member}", self.api.functions.get(callee.member, [])
        if callee.kind == "method":
            for c in self.api.mro(callee.cls):
                if callee.member in c.methods:
                    return f"{callee.cls}.{callee.member}", c.methods[callee.member]
        if callee.kind == "class":
            for c in self.api.mro(callee.cls):
                if "__init__" in c.methods:
                    return callee.cls, c.methods["__init__"]
        return None

    def resolve(self, expr: ast.expr, scope: _Scope) -> T | None:
        if isinstance(expr, ast.Name):
            return scope.lookup(expr.id)
        if isinstance(expr, ast.Attribute):
            owner = self.resolve(expr.value, scope)
            if owner is None:
                return self.attr_types.get(expr.attr) or _as_type(ATTR_MAP.get(expr.attr))
            return self.member_type(owner, expr.attr)
        if isinstance(expr, ast.Call):
            if isinstance(expr.func, ast.Name) and expr.func.id == "import_tensorrt":
                return MODULE
            constant = _constant_getattr(expr)
            if constant is not None:
                owner = self.resolve(constant[0], scope)
                return self.member_type(owner, constant[1]) if owner else None
            callee = self.resolve(expr.func, scope)
            if callee is None:
                return None
            if callee.kind == "class":
                return T("inst", callee.cls)
            found = self.signatures(callee)
            if found and found[1]:
                return self.annotation_type(found[1][0].returns)
        return None

    # scopes -----------------------------------------------------------------------------------
    def bind(self, target: ast.expr, value: ast.expr | None, scope: _Scope) -> None:
        if isinstance(target, ast.Tuple | ast.List):
            values = value.elts if isinstance(value, ast.Tuple | ast.List) else None
            if values is not None and len(values) != len(target.elts):
                values = None
            for i, element in enumerate(target.elts):
                self.bind(element, values[i] if values else None, scope)
            return
        if isinstance(target, ast.Starred):
            self.bind(target.value, None, scope)
            return
        inferred = self.resolve(value, scope) if value is not None else None
        if isinstance(target, ast.Name):
            if inferred is not None:
                scope.names[target.id] = inferred
            elif scope.names.get(target.id) is None:
                scope.names[target.id] = _as_type(NAME_MAP.get(target.id))
        elif isinstance(target, ast.Attribute) and inferred is not None:
            self.attr_types.setdefault(target.attr, inferred)

    def build_scope(self, body: list[ast.stmt], scope: _Scope, args: ast.arguments | None = None) -> None:
        if args is not None:
            for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg):
                if a is not None:
                    scope.names[a.arg] = _as_type(NAME_MAP.get(a.arg))
        nodes = sorted(_scope_nodes(body), key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0)))
        for node in nodes:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    self.bind(target, node.value, scope)
            elif isinstance(node, ast.AnnAssign | ast.NamedExpr):
                self.bind(node.target, node.value, scope)
            elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
                self.bind(node.target, None, scope)
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                self.bind(node.optional_vars, None, scope)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == MODULE_NAME or alias.name.startswith(MODULE_NAME + "."):
                        scope.names[alias.asname or MODULE_NAME] = MODULE if alias.asname is None or \
                            alias.name == MODULE_NAME else None

    # checks -----------------------------------------------------------------------------------
    def use(self, line: int, owner: T, name: str) -> None:
        if owner.kind == "module":
            qual = f"tensorrt.{name}"
            ok = name in self.api.module_names or name in MODULE_DUNDERS
        elif owner.kind in ("class", "inst"):
            qual = f"{owner.cls}.{name}"
            ok = self.api.member(owner.cls, name) is not None or name in OBJECT_ATTRS
        else:
            return
        self.report.uses.append(Use(self.file, line, qual, ok or qual in self.allowed))

    def check_scope(self, body: list[ast.stmt], scope: _Scope) -> None:
        for node in _scope_nodes(body):
            if isinstance(node, ast.Attribute):
                owner = self.resolve(node.value, scope)
                if owner is not None:
                    self.use(node.end_lineno or node.lineno, owner, node.attr)
            elif isinstance(node, ast.Call):
                self.check_call(node, scope)
            elif isinstance(node, ast.ImportFrom) and node.module == MODULE_NAME:
                for alias in node.names:
                    if alias.name != "*":
                        self.use(node.lineno, MODULE, alias.name)
            elif isinstance(node, ast.ClassDef):
                self.check_subclass(node, scope)

    def check_call(self, node: ast.Call, scope: _Scope) -> None:
        if isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2:
            owner = self.resolve(node.args[0], scope)
            if owner is not None:
                constant = _constant_getattr(node)
                if constant is not None:
                    self.use(node.lineno, owner, constant[1])
                else:
                    expr = f"{node.func.id}({ast.unparse(node.args[0])}, {ast.unparse(node.args[1])})"
                    self.report.dynamic.append(Dynamic(self.file, node.lineno, expr))
            return
        callee = self.resolve(node.func, scope)
        found = self.signatures(callee) if callee is not None else None
        if not found or not found[1]:
            return
        qual, overloads = found
        for kw in node.keywords:
            if kw.arg is None:
                continue
            ok = any(kw.arg in s.params or s.var_kw for s in overloads)
            name = f"{qual}({kw.arg}=)"
            self.report.uses.append(Use(self.file, kw.lineno, name, ok or name in self.allowed))

    def check_subclass(self, node: ast.ClassDef, scope: _Scope) -> None:
        """A Python subclass of a TensorRT class (an ILogger) overrides by name: a misspelt override is
        never called, so every public method it defines must exist on its TensorRT bases."""
        bases = [t for t in (self.resolve(b, scope) for b in node.bases) if t is not None and t.kind == "class"]
        for item in node.body:
            if bases and isinstance(item, ast.FunctionDef) and (not item.name.startswith("_")
                                                                 or item.name == "__init__"):
                ok = any(self.api.member(b.cls, item.name) for b in bases)
                name = f"{bases[0].cls}.{item.name} (override)"
                self.report.uses.append(Use(self.file, item.lineno, name, ok or name in self.allowed))

    def run(self, tree: ast.Module) -> Report:
        module_scope = _Scope(None)
        scopes: list[tuple[list[ast.stmt], _Scope]] = []

        def visit(body: list[ast.stmt], scope: _Scope, args: ast.arguments | None) -> None:
            self.build_scope(body, scope, args)
            scopes.append((body, scope))
            for node in _scope_nodes(body, include_defs=True):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                    inner = node.body if isinstance(node.body, list) else [ast.Expr(node.body)]
                    visit(inner, _Scope(scope), node.args)
                elif isinstance(node, ast.ClassDef):
                    visit(node.body, _Scope(scope), None)

        visit(tree.body, module_scope, None)
        for body, scope in scopes:
            self.check_scope(body, scope)
        return self.report


def _constant_getattr(call: ast.Call) -> tuple[ast.expr, str] | None:
    if (isinstance(call.func, ast.Name) and call.func.id in ("getattr", "hasattr") and len(call.args) >= 2
            and isinstance(call.args[1], ast.Constant) and isinstance(call.args[1].value, str)):
        return call.args[0], call.args[1].value
    return None


def _scope_nodes(body: list[ast.stmt], include_defs: bool = False) -> Iterator[ast.AST]:
    """Every node of ``body`` but those inside nested functions, lambdas and classes; with
    ``include_defs`` only those nested definitions themselves. A definition's decorators,
    defaults and bases belong to the enclosing scope."""
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        definition = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)
        if definition or not include_defs:
            yield node
        if definition:
            if isinstance(node, ast.ClassDef):
                todo.extend([*node.bases, *node.keywords, *node.decorator_list])
            else:
                args = node.args
                todo.extend([*args.defaults, *(d for d in args.kw_defaults if d is not None)])
                if not isinstance(node, ast.Lambda):
                    todo.extend(node.decorator_list)
            continue
        todo.extend(ast.iter_child_nodes(node))


def check_source(source: str, filename: str, api: StubAPI, allowed: Iterable[str] = ()) -> Report:
    """Every TensorRT use in ``source``; ``allowed`` names (as reported) count as published."""
    return _Checker(api, filename, allowed).run(ast.parse(source, filename))


def uses_tensorrt(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == MODULE_NAME for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == MODULE_NAME:
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "import_tensorrt":
            return True
    return False


def tensorrt_files(root: Path = REPO) -> list[Path]:
    """TENSORRT_FILES and every other non-test .py file that imports tensorrt or calls import_tensorrt()."""
    found = {root / f for f in TENSORRT_FILES}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            path = Path(folder) / name
            if name.endswith(".py") and path not in found:
                text = path.read_text(encoding="utf-8", errors="replace")
                if "tensorrt" in text and uses_tensorrt(ast.parse(text, str(path))):
                    found.add(path)
    return sorted(found)


def check_product(api: StubAPI, allowed: Iterable[str] = (), root: Path = REPO) -> Report:
    report = Report()
    for path in tensorrt_files(root):
        report.extend(check_source(path.read_text(encoding="utf-8"), path.relative_to(root).as_posix(),
                                   api, allowed))
    return report
