"""Choosing parameters: selectors score, the scope decides what is ranked, the budget keeps the
best; masks and the exact sparse fine-tuning step."""
