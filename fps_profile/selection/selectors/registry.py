"""The selector registry: ``register``, ``get`` and ``list``.

Third-party selectors register with the :func:`register` decorator, or from an
installed package through the ``fps_profile.selectors`` entry-point group::

    [project.entry-points."fps_profile.selectors"]
    mine = "my_package.selectors:MySelector"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fps_profile.errors import UserError
from fps_profile.registry import Registry

SELECTORS: Registry[type] = Registry("selector",
                                     entry_point_group="fps_profile.selectors")  # plugins use this group: never rename


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


_TRUE, _FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")


def option_value(selector: str, key: str, value: Any, default: Any) -> Any:
    """``value`` of option ``key`` as the type of its default, or a one-line error naming both.

    A default of type bool, int, float or str fixes the type: text (the command line's
    ``-o key=value``) is converted (``"3"`` for an int, ``"on"``/``"false"`` for a bool), an int is
    a float where a float is expected, a number is text where text is; anything else is an error.
    A default of another type (None, a callable) accepts any value.
    """
    kind = type(default)
    if default is None or kind not in (bool, int, float, str) or isinstance(value, kind) and (
            kind is not int or not isinstance(value, bool)):
        return value
    text = str(value).strip()
    if kind is bool:
        if text.lower() in _TRUE + _FALSE and not isinstance(value, float):
            return text.lower() in _TRUE
    elif kind is int and not isinstance(value, (bool, float)):
        try:
            return int(text)
        except ValueError:
            pass
    elif kind is float and not isinstance(value, bool):
        try:
            return float(text)
        except ValueError:
            pass
    elif kind is str and not isinstance(value, bool):
        return text
    want = {bool: "true or false", int: "an integer", float: "a number", str: "text"}[kind]
    raise UserError(f"selector {selector!r}: option {key} must be {want} (its default is {default!r}), "
                    f"not {value!r}")


def create(name: str, **options: Any):
    """Instantiate selector ``name`` with its options, rejecting unknown ones and values of the
    wrong type (:func:`option_value`) clearly."""
    cls = get(name)
    accepted = cls.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        takes = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "no options"
        raise UserError(f"selector {name!r} has no option {unknown[0]!r} (it takes: {takes})")
    return cls(**{k: option_value(name, k, v, accepted[k]) for k, v in options.items()})
