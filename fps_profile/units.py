"""Human-readable units for tables and plots (binary prefixes for memory), and markdown tables."""

from __future__ import annotations


def fmt_bytes(n: int | float | None) -> str:
    """``1536 -> "1.5 KiB"``; None -> ``"-"``."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def fmt_seconds(s: float | None) -> str:
    """``0.0123 -> "12.3 ms"``; None -> ``"-"``."""
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    if s < 1:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def bytes_scale(largest: int | float | None) -> tuple[int, str]:
    """Divisor and binary unit for an axis whose largest value is ``largest`` bytes (MiB or GiB)."""
    if largest is not None and largest >= 1024**3:
        return 1024**3, "GiB"
    return 1024**2, "MiB"


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    """A padded markdown table (numbers right-aligned by the caller's strings)."""
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), sep, *(fmt(r) for r in body)])
