"""A named set of interchangeable functions (the policy losses, the advantage estimators): each is
registered under the name its config literal uses, and looked up by that name."""

from __future__ import annotations


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self.functions: dict = {}

    def register(self, name: str):
        """Decorator: register the function under `name`."""
        def add(fn):
            self.functions[name] = fn
            return fn
        return add

    def __getitem__(self, name: str):
        if name not in self.functions:
            raise ValueError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.functions)}")
        return self.functions[name]

    def names(self) -> list[str]:
        return list(self.functions)
