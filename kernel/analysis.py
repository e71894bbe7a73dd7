"""Which names a ``%%remote`` cell reads from the notebook and which it assigns.

``analyze(code)`` walks the cell's AST in execution order:

* a name is *read* when it is loaded before the cell has surely assigned it: assignments in
  the same block (and in ``with`` bodies) count; assignments inside ``if``/``for``/``while``/
  ``try`` bodies only count inside that body, since they may not run;
* loads inside function and lambda bodies run later, so they are reads unless the cell
  assigns the name anywhere at its top level (or the function binds it itself);
* a name is *assigned* when the cell binds it at its top level (including inside compound
  statements, ``global`` declarations in functions and walrus targets).

It is an analysis of the text, not of what runs: ``--push`` and ``--pull`` override it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

__all__ = ["CellNames", "analyze", "analyze_expression"]


@dataclass
class CellNames:
    reads: list[str] = field(default_factory=list)  # in order of first read
    assigns: list[str] = field(default_factory=list)  # in order of first assignment
    ends_with_expression: bool = False


class _Scope:
    """Bindings of one function (or lambda/comprehension) scope."""

    def __init__(self, params: set[str]) -> None:
        self.locals = set(params)
        self.globals: set[str] = set()
        self.free: list[str] = []


class _Analyzer:
    def __init__(self) -> None:
        self.reads: dict[str, None] = {}
        self.deferred: dict[str, None] = {}
        self.assigns: dict[str, None] = {}
        self.declared_global: dict[str, None] = {}

    # -- top level: statements in order, with what is surely bound so far ----------------

    def block(self, body: list[ast.stmt], bound: set[str]) -> None:
        for stmt in body:
            self.statement(stmt, bound)

    def load(self, name: str, bound: set[str]) -> None:
        if name not in bound:
            self.reads.setdefault(name)

    def store(self, name: str, bound: set[str]) -> None:
        bound.add(name)
        self.assigns.setdefault(name)

    def statement(self, stmt: ast.stmt, bound: set[str]) -> None:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in stmt.decorator_list:
                self.expr(dec, bound)
            self.arguments_now(stmt.args, bound)
            if stmt.returns is not None:
                self.expr(stmt.returns, bound)
            self.function_body(stmt.args, stmt.body)
            self.store(stmt.name, bound)
        elif isinstance(stmt, ast.ClassDef):
            for node in [*stmt.decorator_list, *stmt.bases, *stmt.keywords]:
                self.expr(node, bound)
            self.class_body(stmt.body, bound)
            self.store(stmt.name, bound)
        elif isinstance(stmt, ast.Assign):
            self.expr(stmt.value, bound)
            for target in stmt.targets:
                self.target(target, bound)
        elif isinstance(stmt, ast.AugAssign):
            self.expr(stmt.value, bound)
            if isinstance(stmt.target, ast.Name):
                self.load(stmt.target.id, bound)
            self.target(stmt.target, bound)
        elif isinstance(stmt, ast.AnnAssign):
            if stmt.value is not None:
                self.expr(stmt.value, bound)
                self.target(stmt.target, bound)
            self.expr(stmt.annotation, bound)
        elif isinstance(stmt, (ast.For, ast.AsyncFor)):
            self.expr(stmt.iter, bound)
            inner = set(bound)
            self.target(stmt.target, inner)
            self.block(stmt.body, inner)
            self.block(stmt.orelse, set(bound))
        elif isinstance(stmt, ast.While):
            self.expr(stmt.test, bound)
            self.block(stmt.body, set(bound))
            self.block(stmt.orelse, set(bound))
        elif isinstance(stmt, ast.If):
            self.expr(stmt.test, bound)
            self.block(stmt.body, set(bound))
            self.block(stmt.orelse, set(bound))
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                self.expr(item.context_expr, bound)
                if item.optional_vars is not None:
                    self.target(item.optional_vars, bound)
            self.block(stmt.body, bound)
        elif isinstance(stmt, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            self.block(stmt.body, set(bound))
            for handler in stmt.handlers:
                inner = set(bound)
                if handler.type is not None:
                    self.expr(handler.type, inner)
                if handler.name:
                    self.store(handler.name, inner)
                self.block(handler.body, inner)
            self.block(stmt.orelse, set(bound))
            self.block(stmt.finalbody, set(bound))
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if alias.name == "*":
                    continue
                self.store(alias.asname or alias.name.split(".")[0], bound)
        elif isinstance(stmt, ast.Delete):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    self.load(target.id, bound)
                    bound.discard(target.id)
                else:
                    self.expr(target, bound)
        elif isinstance(stmt, (ast.Global, ast.Nonlocal)):
            pass
        elif hasattr(ast, "Match") and isinstance(stmt, ast.Match):
            self.expr(stmt.subject, bound)
            for case in stmt.cases:
                inner = set(bound)
                for node in ast.walk(case.pattern):
                    name = getattr(node, "name", None)
                    if isinstance(name, str):
                        self.store(name, inner)
                    if isinstance(node, ast.MatchValue):
                        self.expr(node.value, inner)
                    elif isinstance(node, ast.MatchClass):
                        self.expr(node.cls, inner)
                if case.guard is not None:
                    self.expr(case.guard, inner)
                self.block(case.body, inner)
        else:  # Expr, Return, Raise, Assert, Pass, ...
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.expr):
                    self.expr(child, bound)
                elif isinstance(child, ast.stmt):
                    self.statement(child, bound)

    def target(self, node: ast.expr, bound: set[str]) -> None:
        """An assignment target: names are stored, subscripts and attributes are read."""
        if isinstance(node, ast.Name):
            self.store(node.id, bound)
        elif isinstance(node, (ast.Tuple, ast.List)):
            for elt in node.elts:
                self.target(elt, bound)
        elif isinstance(node, ast.Starred):
            self.target(node.value, bound)
        else:
            self.expr(node, bound)

    def arguments_now(self, args: ast.arguments, bound: set[str]) -> None:
        for default in [*args.defaults, *args.kw_defaults]:
            if default is not None:
                self.expr(default, bound)
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs,
                    *(a for a in (args.vararg, args.kwarg) if a is not None)]:
            if arg.annotation is not None:
                self.expr(arg.annotation, bound)

    def class_body(self, body: list[ast.stmt], bound: set[str]) -> None:
        """A class body runs now in its own namespace; its stores stay in the class."""
        saved = self.assigns
        self.assigns = {}
        self.block(body, set(bound))
        self.assigns = saved

    # -- expressions ----------------------------------------------------------------------

    def expr(self, node: ast.AST, bound: set[str]) -> None:
        if isinstance(node, ast.Name):
            if isinstance(node.ctx, ast.Load):
                self.load(node.id, bound)
            else:
                self.store(node.id, bound)
        elif isinstance(node, ast.NamedExpr):
            self.expr(node.value, bound)
            self.store(node.target.id, bound)
        elif isinstance(node, ast.Lambda):
            self.arguments_now(node.args, bound)
            self.function_body(node.args, [node.body])
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            self.comprehension(node, bound)
        else:
            for child in ast.iter_child_nodes(node):
                self.expr(child, bound)

    def comprehension(self, node: ast.AST, bound: set[str]) -> None:
        gens: list[ast.comprehension] = node.generators
        self.expr(gens[0].iter, bound)  # evaluated in the enclosing scope
        inner = set(bound)
        local: set[str] = set()
        for i, gen in enumerate(gens):
            if i:
                self.comp_expr(gen.iter, inner, local)
            for name in _target_names(gen.target):
                local.add(name)
            for cond in gen.ifs:
                self.comp_expr(cond, inner, local)
        parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
        for part in parts:
            self.comp_expr(part, inner, local)

    def comp_expr(self, node: ast.AST, bound: set[str], local: set[str]) -> None:
        self.expr(node, bound | local)

    # -- function bodies: reads happen later ----------------------------------------------

    def function_body(self, args: ast.arguments, body: list) -> None:
        scope = _Scope(_params(args))
        _collect_scope(body, scope)
        for name in scope.globals:
            self.declared_global.setdefault(name)
        for name in _free_loads(body, scope):
            self.deferred.setdefault(name)

    def result(self) -> tuple[list[str], list[str]]:
        reads = dict(self.reads)
        for name in self.deferred:
            if name not in self.assigns:
                reads.setdefault(name)
        assigns = dict(self.assigns)
        for name in self.declared_global:
            assigns.setdefault(name)
        return list(reads), list(assigns)


def _target_names(node: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]


_NESTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _outer_parts(node: ast.AST) -> list[ast.AST]:
    """The parts of a nested definition evaluated in the enclosing scope."""
    parts = list(getattr(node, "decorator_list", []))
    if isinstance(node, ast.ClassDef):
        return parts + [*node.bases, *node.keywords]
    args: ast.arguments = node.args
    parts += [*args.defaults, *(d for d in args.kw_defaults if d is not None)]
    return parts


def _scope_nodes(body: list):
    """The nodes of one scope: nested definitions are yielded but their bodies skipped."""
    todo = list(reversed(body))
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, _NESTED):
            todo.extend(_outer_parts(node))
        else:
            todo.extend(ast.iter_child_nodes(node))


def _params(args: ast.arguments) -> set[str]:
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    return names | {a.arg for a in (args.vararg, args.kwarg) if a is not None}


def _body(node: ast.AST) -> list:
    return node.body if isinstance(node.body, list) else [node.body]


def _collect_scope(body: list, scope: _Scope) -> None:
    """Names a scope binds (and those it declares global)."""
    for node in _scope_nodes(body):
        if isinstance(node, ast.Global):
            scope.globals.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            scope.locals.update(node.names)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            scope.locals.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            scope.locals.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name != "*":
                    scope.locals.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ExceptHandler) and node.name:
            scope.locals.add(node.name)
    scope.locals -= scope.globals


def _free_loads(body: list, scope: _Scope) -> list[str]:
    """Names a scope loads that it does not bind, nested scopes included."""
    free: dict[str, None] = {}
    for node in _scope_nodes(body):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            if node.id not in scope.locals:
                free.setdefault(node.id)
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            if node.target.id not in scope.locals:  # global x; x += 1 reads x
                free.setdefault(node.target.id)
        elif isinstance(node, _NESTED):
            inner = _Scope(set() if isinstance(node, ast.ClassDef) else _params(node.args))
            _collect_scope(_body(node), inner)
            for name in _free_loads(_body(node), inner):
                if name in inner.globals or name not in scope.locals:
                    free.setdefault(name)
    return list(free)


def analyze(code: str, filename: str = "<cell>") -> CellNames:
    """The names a cell reads and assigns; raises SyntaxError for invalid code."""
    tree = ast.parse(code, filename)
    analyzer = _Analyzer()
    analyzer.block(tree.body, set())
    reads, assigns = analyzer.result()
    ends = bool(tree.body) and isinstance(tree.body[-1], ast.Expr)
    return CellNames(reads, assigns, ends)


def analyze_expression(code: str, filename: str = "<expr>") -> CellNames:
    """The names one expression reads (``%remote EXPR``)."""
    tree = ast.parse(code.strip(), filename, mode="eval")
    analyzer = _Analyzer()
    analyzer.expr(tree.body, set())
    reads, assigns = analyzer.result()
    return CellNames(reads, assigns, True)
