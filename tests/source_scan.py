"""AST scan for code-execution hazards, resolving import aliases (``import torch as T``,
``from torch import load as L``, ``import pandas as pd``, ``import builtins``)."""

from __future__ import annotations

import ast
from pathlib import Path

#: modules whose loading runs code from the data (pickle and friends)
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "marshal", "shelve", "joblib", "cloudpickle"}
#: fully-qualified calls that execute code or a shell
FORBIDDEN_CALLS = {
    "builtins.eval", "builtins.exec", "builtins.compile", "builtins.__import__",
    "os.system", "os.popen", "os.execl", "os.execv", "os.spawnl", "os.spawnv",
    "pandas.read_pickle", "numpy.load:allow_pickle", "yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all",
    "yaml.full_load_all", "torch.jit.load", "commands.getoutput",
}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


class _Scanner(ast.NodeVisitor):
    def __init__(self, rel: str) -> None:
        self.rel = rel
        self.aliases: dict[str, str] = {name: f"builtins.{name}" for name in ("eval", "exec", "compile", "__import__")}
        self.problems: list[str] = []

    def _flag(self, node: ast.AST, what: str) -> None:
        self.problems.append(f"{self.rel}:{getattr(node, 'lineno', 0)}: {what}")

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
            if a.name.split(".")[0] in PICKLE_MODULES:
                self._flag(node, f"imports {a.name} (a pickle-family module)")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ""
        for a in node.names:
            self.aliases[a.asname or a.name] = f"{mod}.{a.name}"
        if mod.split(".")[0] in PICKLE_MODULES:
            self._flag(node, f"imports from {mod} (a pickle-family module)")

    def _qualname(self, expr: ast.AST) -> str:
        if isinstance(expr, ast.Name):
            return self.aliases.get(expr.id, expr.id)
        if isinstance(expr, ast.Attribute):
            base = self._qualname(expr.value)
            return f"{base}.{expr.attr}" if base else ""
        if isinstance(expr, ast.Call) and self._qualname(expr.func) in ("builtins.__import__", "importlib.import_module"):
            if expr.args and isinstance(expr.args[0], ast.Constant):
                return str(expr.args[0].value)
        return ""

    def visit_Call(self, node: ast.Call) -> None:
        name = self._qualname(node.func)
        name = {"pd.read_pickle": "pandas.read_pickle", "np.load": "numpy.load"}.get(name, name)
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        static_import = name == "builtins.__import__" and bool(node.args) and isinstance(node.args[0], ast.Constant)
        if name in FORBIDDEN_CALLS and not static_import:  # __import__("transformers") is a plain import
            self._flag(node, f"{name}()")
        if name == "getattr" and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant):
            target = f"{self._qualname(node.args[0])}.{node.args[1].value}"
            if target in FORBIDDEN_CALLS:
                self._flag(node, f"getattr -> {target}")
        root = name.split(".")[0]
        if root in PICKLE_MODULES:
            self._flag(node, f"{name}() (pickle-family)")
        if name == "torch.load":
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                self._flag(node, "torch.load without weights_only=True")
        if name in ("yaml.load", "yaml.load_all"):
            loader = kw.get("Loader") or (node.args[1] if len(node.args) > 1 else None)
            lname = self._qualname(loader).split(".")[-1] if loader is not None else ""
            if lname not in SAFE_YAML_LOADERS:
                self._flag(node, f"{name} with Loader={lname or 'default'} (use yaml.safe_load)")
        if name == "numpy.load" and isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is True:
            self._flag(node, "numpy.load(allow_pickle=True)")
        if name.startswith("subprocess.") and isinstance(kw.get("shell"), ast.Constant) and kw["shell"].value is True:
            self._flag(node, f"{name}(shell=True)")
        tr = kw.get("trust_remote_code")
        if isinstance(tr, ast.Constant) and tr.value is True:
            self._flag(node, "trust_remote_code=True hard-coded")
        self.generic_visit(node)


def scan(paths: list[Path], root: Path) -> list[str]:
    """Every hazard found in ``paths`` as ``file:line: what``."""
    problems: list[str] = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        s = _Scanner(str(path.relative_to(root)))
        s.visit(tree)
        problems += s.problems
    return problems
