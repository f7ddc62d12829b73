"""The selector registry: ``register``, ``get`` and ``list``.

Third-party selectors register with the :func:`register` decorator, or from an
installed package through the ``fps_profile.selection.selectors`` entry-point group::

    [project.entry-points."fps_profile.selectors"]
    mine = "my_package.selectors:MySelector"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fps_profile.errors import UserError
from fps_profile.registry import Registry

SELECTORS: Registry[type] = Registry("selector", entry_point_group="fps_profile.selectors")  # plugins use this group: never rename


def register(name: str, *, override: bool = False) -> Callable[[type], type]:
    """Class decorator that registers a :class:`~fps_profile.selection.selectors.base.Selector`.

    Args:
        name: Name users pass as ``selector=``.
        override: Replace an existing selector of that name.
    """

    def add(cls: type) -> type:
        cls.name = name
        SELECTORS.register(name, cls, override=override)
        return cls

    return add


def get(name: str) -> type:
    """The selector class registered as ``name`` (raises a "did you mean" UserError)."""
    cls = SELECTORS.get(name)
    if not getattr(cls, "name", ""):
        cls.name = name
    return cls


def list_selectors(pattern: str = "*") -> list[str]:
    """Registered selector names matching a shell-style wildcard, sorted."""
    return SELECTORS.names(pattern)


def create(name: str, **options: Any):
    """Instantiate selector ``name`` with its options, rejecting unknown ones clearly."""
    cls = get(name)
    accepted = cls.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "no options"
        raise UserError(f"selector {name!r} has no option {unknown[0]!r} (it takes: {takes})")
    return cls(**options)
