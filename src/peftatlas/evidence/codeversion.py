"""Code versions: a run's results are keyed by every package source file that computes them.

A method's code version hashes the *import closure* of its module inside the package, together with
the closure of the training loop (:data:`RUN_ROOTS`: the worker that executes a run, the loop, the
model and data loaders), so editing a shared kernel (e.g. ``methods/lora.py``'s ``add_lowrank``, used
by VeRA and VB-LoRA) changes the version of every method that imports it and of no other::

    closure(m) = {m} ∪ ⋃ closure(d) for each package module d that m imports (anywhere in its text),
                 never entering the modules no run imports (:data:`NOT_RUN`)
    version(method, model) = __version__ + "+" + sha256(sorted (path, bytes) of
                             closure(method) ∪ closure(RUN_ROOTS) ∪ closure(setting of model))[:12]

A model's setting module (``execute.SETTING_MODULES``: the causal LM's, the vision transformer's) is
imported by name, so it enters only the versions of that model's runs. :data:`NOT_RUN` are the
packages that convert other libraries' files (PEFT folders); a run saves and loads its own format
only and never imports them (``tests/test_codeversion.py`` checks that in a fresh process), so
editing them cannot change a result and does not change a version.

Imports are read from the source (the AST, so function-level lazy imports count too), not from a
running interpreter. ``from PKG import name`` where ``PKG`` is a package and ``name`` not one of its
submodules follows only the import in ``PKG/__init__.py`` that binds ``name`` (plus that file's own
text): a package initialiser that imports every method must not make every method depend on all
the others. Files are read once per process (see :func:`method_code_versions`): a file edited while
a sweep runs does not change the code already imported and running, so it must not change its keys.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path

from .. import __version__

PACKAGE = "peftatlas"
# the modules every run executes besides its method (their closures are part of every version)
RUN_ROOTS = ("peftatlas.evidence.execute", "peftatlas.evidence.train", "peftatlas.evidence.models",
             "peftatlas.evidence.data")
# packages no run imports (reached from the closure only through PEFT-folder branches of core.io)
NOT_RUN = ("peftatlas.interop",)

Reader = Callable[[Path], bytes]


def _read(path: Path) -> bytes:
    return path.read_bytes()


def package_root() -> Path:
    """The folder of the ``peftatlas`` package."""
    return Path(__file__).resolve().parent.parent


class ImportGraph:
    """Modules of one package (rooted at ``root``, named ``package``) and the package modules each imports."""

    def __init__(self, root: Path, package: str = PACKAGE, read: Reader = _read) -> None:
        self.root = root
        self.package = package
        self.read = read
        self._trees: dict[str, ast.Module] = {}

    # --- names and files ---------------------------------------------------------------------------
    def file_of(self, module: str) -> Path | None:
        """The source file of a package module (``pkg.a.b`` → ``a/b.py`` or ``a/b/__init__.py``); None
        outside the package and inside :data:`NOT_RUN`."""
        if module != self.package and not module.startswith(self.package + "."):
            return None
        if any(module == n or module.startswith(n + ".") for n in NOT_RUN):
            return None
        rel = module.split(".")[1:]
        base = self.root.joinpath(*rel)
        for candidate in (base.with_suffix(".py") if rel else None, base / "__init__.py"):
            if candidate is not None and candidate.is_file():
                return candidate
        return None

    def is_package(self, module: str) -> bool:
        f = self.file_of(module)
        return f is not None and f.name == "__init__.py"

    def tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            f = self.file_of(module)
            self._trees[module] = ast.parse(self.read(f)) if f is not None else ast.Module(body=[], type_ignores=[])
        return self._trees[module]

    def _absolute(self, module: str, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        parts = module.split(".")
        here = parts if self.is_package(module) else parts[:-1]
        base = here[: len(here) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    # --- edges -------------------------------------------------------------------------------------
    def imports(self, module: str, names: frozenset[str] | None = None) -> set[tuple[str, frozenset[str] | None]]:
        """Package modules ``module`` depends on, as (module, names) pairs.

        ``names=None`` means the whole module (every import in it is followed); a set of names means
        only the imports of a package initialiser that bind those names.
        """
        out: set[tuple[str, frozenset[str] | None]] = set()
        for node in ast.walk(self.tree(module)):
            if isinstance(node, ast.Import):
                if names is None:
                    out |= {(a.name, None) for a in node.names if self.file_of(a.name)}
            elif isinstance(node, ast.ImportFrom):
                target = self._absolute(module, node)
                for alias in node.names:
                    bound = alias.asname or alias.name
                    if names is not None and bound not in names:
                        continue
                    sub = f"{target}.{alias.name}"
                    if self.file_of(sub):
                        out.add((sub, None))
                    elif self.file_of(target):
                        out.add((target, frozenset([alias.name]) if self.is_package(target) else None))
        return out

    def closure(self, roots: Iterable[str]) -> set[str]:
        """Every package module reachable from ``roots`` (module names; package initialisers by name)."""
        seen: set[tuple[str, frozenset[str] | None]] = set()
        todo = [(r, None) for r in roots if self.file_of(r)]
        while todo:
            item = todo.pop()
            if item in seen:
                continue
            seen.add(item)
            todo += [d for d in self.imports(*item) if d not in seen]
        return {m for m, _ in seen}

    def digest(self, modules: Iterable[str]) -> str:
        """SHA-256 over (relative path, bytes) of the modules' files, in path order."""
        files = sorted({f for m in modules if (f := self.file_of(m)) is not None})
        h = hashlib.sha256()
        for f in files:
            h.update(f.relative_to(self.root).as_posix().encode() + b"\0")
            h.update(self.read(f) + b"\0")
        return h.hexdigest()


def method_module(method: str) -> str:
    """The module that defines a registered method's class."""
    from ..core.method import get_method

    cls = get_method(method)
    module = cls.__module__
    if module == "__main__" or not module.startswith(PACKAGE):
        source = inspect.getsourcefile(cls)
        return source or module
    return module


def setting_roots(model: str | None) -> tuple[str, ...]:
    """The setting module that runs ``model`` (empty for the sentence encoders, which :data:`RUN_ROOTS` cover)."""
    from .execute import SETTING_MODULES

    return (SETTING_MODULES[model],) if model in SETTING_MODULES else ()


def code_version_of(modules: Iterable[str], graph: ImportGraph, model: str | None = None) -> str:
    """``<version>+<hash>`` of the closure of ``modules`` together with the run's own code (:data:`RUN_ROOTS`
    and ``model``'s setting)."""
    return f"{__version__}+{graph.digest(graph.closure([*modules, *RUN_ROOTS, *setting_roots(model)]))[:12]}"


def compute_code_versions(methods: Iterable[str], read: Reader = _read, model: str | None = None) -> dict[str, str]:
    """Code version of each registered method for runs of ``model`` (a fresh read of the sources, through ``read``)."""
    from ..core.method import get_method

    graph = ImportGraph(package_root(), read=read)
    return {get_method(m).name: code_version_of([method_module(m)], graph, model) for m in methods}


@functools.cache
def method_code_versions(model: str | None = None) -> dict[str, str]:
    """Every registered method's code version for runs of ``model``, read once per process (module docstring)."""
    from ..core.method import registered_methods

    return compute_code_versions(registered_methods(), model=model)
