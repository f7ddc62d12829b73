"""A small named registry with lazy entry-point plugins and "did you mean" errors.

Modelled on timm's model registry (``register_model`` / ``list_models`` with
wildcards) and lm-evaluation-harness's Registry (clear errors, lazy targets).
"""

from __future__ import annotations

import fnmatch
from importlib import metadata
from typing import Generic, TypeVar

from fps_profile.errors import UserError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects (usually classes).

    Third-party packages add entries through the entry-point group given here;
    those are only imported when first asked for by name.

    Args:
        kind: What the entries are, for error messages (e.g. ``"selector"``).
        entry_point_group: Entry-point group scanned for plugins, or None.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._lazy: dict[str, metadata.EntryPoint] | None = None

    def register(self, name: str, obj: T | None = None, *, override: bool = False):
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        Raises:
            ValueError: If ``name`` is taken and ``override`` is False.
        """

        def add(target: T) -> T:
            if not override and name in self._items and self._items[name] is not target:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = target
            return target

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests and by plugins that replace a built-in)."""
        self._items.pop(name, None)

    def _entry_points(self) -> dict[str, metadata.EntryPoint]:
        if self._lazy is None:
            self._lazy = {}
            if self.entry_point_group:
                for ep in metadata.entry_points(group=self.entry_point_group):
                    self._lazy.setdefault(ep.name, ep)
        return self._lazy

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names (plugins included) matching a shell-style wildcard."""
        every = set(self._items) | set(self._entry_points())
        return sorted(n for n in every if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._items or name in self._entry_points()

    def get(self, name: str) -> T:
        """Return the entry for ``name``, importing a plugin on first use.

        Raises:
            UserError: Unknown name (with suggestions), or a plugin that fails to load.
        """
        if name in self._items:
            return self._items[name]
        ep = self._entry_points().get(name)
        if ep is None:
            raise did_you_mean(name, self.names(), self.kind)
        try:
            target = ep.load()
        except Exception as exc:  # a broken plugin must not take the tool down with a traceback
            raise UserError(f"{self.kind} plugin {name!r} ({ep.value}) failed to load: {exc}") from exc
        if name not in self._items:  # the plugin module may have registered itself on import
            self._items[name] = target
        return self._items[name]

