"""PEP 562 lazy names for hypenet's packages: a package names what its heavy submodules (torch, transformers,
Triton) provide, and they load when one of those names is first asked for, not with the package (nor with the
command line's parser, which imports the packages)."""

from __future__ import annotations

import importlib


def lazy_names(package: str, namespace: dict, names: dict[str, str]):
    """The module `__getattr__` and `__dir__` of `package` (its `__name__`, `globals()`), for `names`: {name: the
    submodule that provides it, relative to the package}.

    Asking for a name imports its submodule and puts every name that submodule provides into the package's
    namespace, so later look-ups go straight there, and a name that is also a submodule's (hypenet.bench's `run`, the
    function, from the module hypenet.bench.run) is the name's value, not the submodule that the import set as an
    attribute. Any other name is an AttributeError naming the package."""
    def __getattr__(name: str):
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f".{names[name]}", package)
        namespace.update({n: getattr(module, n) for n, source in names.items() if source == names[name]})
        return namespace[name]

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
