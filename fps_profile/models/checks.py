"""Checks of model arguments shared by the model builders (timm, ``hf:``, user factories)."""

from __future__ import annotations

from fps_profile.errors import UserError


def check_image_size(image_size: int | None) -> None:
    """Fail with one line unless ``image_size`` is None or an integer >= 1."""
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image size must be an integer >= 1, not {image_size!r}")
