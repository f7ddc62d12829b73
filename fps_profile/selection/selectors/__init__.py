"""Selector plugins and their registry.

Built-ins: ``fps``, ``gd-fps``, ``gps``, ``magnitude``, ``random``, ``wanda``, ``snip``.
"""

from fps_profile.selection.selectors.base import Batch, Selector, Target
from fps_profile.selection.selectors.registry import SELECTORS, create, get, list_selectors, register

# Importing the built-in modules registers them.
from fps_profile.selection.selectors import fps, gdfps, gps, magnitude, random, snip, wanda  # noqa: E402,F401  isort: skip

__all__ = ["Batch", "Selector", "Target", "SELECTORS", "create", "get", "list_selectors", "register"]
