"""Import a sweep file (a dotted module or a path to a .py file) and return its RUN_DESCRIPTION.

Files written for Sample Factory run unmodified: while a sweep loads, its two launcher modules
(`run_description`, `launcher_utils`) resolve to ours. Every other `sample_factory` import resolves to
the real package when it is installed.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

from jobqueue import sweep
from jobqueue.errors import UserError

ALIASED = {
    "sample_factory.launcher.run_description": sweep,
    "sample_factory.launcher.launcher_utils": sweep,
}
_PARENTS = ("sample_factory", "sample_factory.launcher")


@dataclass
class LoadedSweep:
    run: sweep.RunDescription
    path: str  # the file it came from
    target: str  # what the user typed


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, module):
        self.module = module

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        pass


class _EmptyPackageLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__path__ = []


class _SampleFactoryAlias(importlib.abc.MetaPathFinder):
    """Serves our module for the two aliased paths, and empty parent packages when SF is not installed."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in ALIASED:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(ALIASED[fullname]))
        if fullname in _PARENTS:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                real = finder.find_spec(fullname, path, target)
                if real is not None:
                    return None  # the real Sample Factory is installed: let it import normally
            return importlib.machinery.ModuleSpec(fullname, _EmptyPackageLoader(), is_package=True)
        return None


def _locate(target: str) -> tuple[str, Path]:
    """(module name, file path) for a dotted module or a .py path."""
    if target.endswith(".py") or os.sep in target:
        path = Path(target)
        if not path.is_file():
            raise UserError(f"{target}: no such sweep file; give a path to a .py file or a dotted module name")
        return path.stem, path.resolve()
    try:
        spec = importlib.util.find_spec(target)
    except (ImportError, ValueError) as exc:
        spec = None
        missing = getattr(exc, "name", None) or target
        raise UserError(
            f"{target}: module not found (no module named {missing!r}); run from the directory that contains it "
            "or give a path to the .py file"
        ) from None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise UserError(
            f"{target}: module not found; run from the directory that contains it or give a path to the .py file"
        )
    return target, Path(spec.origin)


def load_sweep(target: str) -> LoadedSweep:
    """Run a sweep file and return its RUN_DESCRIPTION. Every failure is a UserError naming the file."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as with Sample Factory's --run, modules resolve from here
    module_name, path = _locate(target)
    shown = os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)

    finder = _SampleFactoryAlias()
    sys.meta_path.insert(0, finder)
    before = set(sys.modules)
    sweep.set_sweep_seed(path.stem)
    try:
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None  # _locate gave a .py file: it has a source loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            raise UserError(f"{shown}:{exc.lineno}: syntax error: {exc.msg}; fix the sweep file") from None
        except ModuleNotFoundError as exc:
            raise UserError(
                f"{shown}: imports {exc.name!r}, which is not installed here; install it or remove the import"
            ) from None
        except UserError as exc:
            raise UserError(f"{shown}: {exc}") from None
        except Exception as exc:  # the sweep's own code failed: show its message and where
            line = _sweep_line(exc, path)
            raise UserError(f"{shown}{line}: raised {type(exc).__name__}: {exc}; fix the sweep file") from None
    finally:
        sys.meta_path.remove(finder)
        for name in set(sys.modules) - before:
            if name in ALIASED or name in _PARENTS or name == module_name:
                del sys.modules[name]

    run = getattr(module, "RUN_DESCRIPTION", None)
    if run is None:
        raise UserError(f"{shown}: defines no RUN_DESCRIPTION; add RUN_DESCRIPTION = RunDescription(...)")
    if not isinstance(run, sweep.RunDescription):
        raise UserError(
            f"{shown}: RUN_DESCRIPTION is a {type(run).__name__}, not a RunDescription; "
            "set it to RunDescription(run_name, experiments=[...])"
        )
    return LoadedSweep(run=run, path=str(path), target=target)


def _sweep_line(exc: BaseException, path: Path) -> str:
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if Path(frame.filename) == path:
            return f":{frame.lineno}"
    return ""
