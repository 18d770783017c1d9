"""Lazy package attributes (PEP 562), shared by ``pdnet`` and its subpackages.

A package lists which submodule defines each public name; the first use of a name
imports that submodule only. So ``pdnet --help`` and every command's argument errors
answer without importing torch, and each command imports only what it uses.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_attributes(
    package: str, exports: Mapping[str, str], submodules: Iterable[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose names import on first use.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the submodule (relative to ``package``) defining it.
        submodules: submodules reachable as attributes without importing them first
            (``pdnet.ops.part_attention`` after a bare ``import pdnet``); one that is not
            installed (``pdnet.kernels`` without ``kernels/``) is an AttributeError.

    Returns:
        (__getattr__, __dir__), to be assigned at the package's top level. A name is
        cached in the package once imported, so later lookups skip ``__getattr__``.
    """
    submodules = frozenset(submodules)

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        elif name in submodules:
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r} ({exc})") from None
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        names = vars(sys.modules[package])
        public = {k for k in names if not k.startswith("_")} | set(names.get("__all__", ()))
        return sorted(public | set(exports) | submodules)

    return __getattr__, __dir__
