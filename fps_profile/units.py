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


# -- quantities with units, as users type them ------------------------------------------------------

#: Byte units a size may carry: decimal (GB = 10^9 bytes) and binary (GiB = 2^30 bytes), any case.
BYTE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
#: Time units a duration may carry; a bare number is seconds.
SECOND_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "min": 60.0, "h": 3600.0}
SIZE_HELP = "a size with its unit: GiB = 2^30 bytes, MiB = 2^20, GB = 10^9, MB = 10^6, B = bytes"


def _number_and_unit(value) -> tuple[float, str] | None:
    import re

    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value), ""
    m = re.fullmatch(r"\s*([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z%]*)\s*", str(value))
    return (float(m.group(1)), m.group(2)) if m else None


def parse_bytes(value, what: str = "memory size") -> int:
    """``"8GiB"`` -> 8 * 2^30, ``"500MB"`` -> 500 * 10^6, ``"1024B"`` -> 1024.

    A unit is required: a bare number (``8``) would silently mean 8 bytes.

    Raises:
        UserError: No unit, an unknown unit, or a size that is not more than 0 bytes.
    """
    from fps_profile.errors import UserError

    parsed = _number_and_unit(value)
    if parsed is None or parsed[1].lower() not in ("", *BYTE_UNITS):
        raise UserError(f"{what} {value!r} is not a memory size: write {SIZE_HELP}, e.g. 8GiB")
    number, unit = parsed
    if not 0 < number < float("inf"):
        raise UserError(f"{what} must be more than 0 bytes, not {value!r}")
    if not unit:
        raise UserError(f"{what} {value!r} has no unit: write e.g. {_plain(number)}GiB (GiB = 2^30 bytes, "
                        f"GB = 10^9, B = bytes)")
    return int(number * BYTE_UNITS[unit.lower()])


def parse_seconds(value, what: str = "time limit") -> float:
    """``1800`` or ``"1800"`` (seconds), ``"30s"``, ``"500ms"``, ``"5min"``, ``"2h"`` -> seconds.

    Raises:
        UserError: Not a duration, or not more than 0 seconds.
    """
    from fps_profile.errors import UserError

    parsed = _number_and_unit(value)
    if parsed is None or parsed[1].lower() not in SECOND_UNITS:
        raise UserError(f"{what} must be a duration in seconds (1800, 30s, 500ms, 5min, 2h), not {value!r}")
    number, unit = parsed
    if not 0 < number < float("inf"):
        raise UserError(f"{what} must be more than 0 seconds, not {value!r}")
    return number * SECOND_UNITS[unit.lower()]


def parse_percent(value, what: str = "tolerance") -> float:
    """``"5%"`` -> 0.05. The ``%`` is required: a bare ``5`` could mean 5% or 500%.

    Raises:
        UserError: No ``%``, not a number, or below 0%.
    """
    from fps_profile.errors import UserError

    parsed = _number_and_unit(value)
    if parsed is None or parsed[1] not in ("", "%"):
        raise UserError(f"{what} must be a percentage such as 5%, not {value!r}")
    number, unit = parsed
    if not 0 <= number < float("inf"):
        raise UserError(f"{what} must be a percentage >= 0%, not {value!r}")
    if not unit:
        raise UserError(f"{what} {value!r} has no unit: write it as a percentage, e.g. "
                        f"{_plain(number * 100 if 0 < number < 1 else number)}%")
    return number / 100


def _plain(x: float) -> str:
    return f"{x:g}"


def markdown_table(head: list[str], body: list[list[str]]) -> str:
    """A padded markdown table (numbers right-aligned by the caller's strings)."""
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), sep, *(fmt(r) for r in body)])
