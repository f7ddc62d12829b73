"""Choosing parameters: selectors score, the scope decides what is ranked, the budget keeps the
best; masks and the exact sparse fine-tuning step."""

from fps_profile.selection import shira  # noqa: E402,F401 (registers the shira:R budget and the shira scope)
