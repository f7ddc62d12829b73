"""Which parts of two results files' environments differ (versions, devices), for the gate's report.

The gate compares figures, never ``env``; but a figure that moved between two torch versions or two
GPUs is read differently from one that moved between two commits, so the report says what differs.
"""

from __future__ import annotations

from collections.abc import Sequence

#: ``env`` keys read over every row of a file: versions.
VERSION_KEYS = ("fps_profile", "torch", "timm", "python", "cuda")
#: ``env`` keys read per device (``cpu``, ``cuda:0``, ``sim:h100`` ...): what the rows ran on.
DEVICE_KEYS = ("device_name", "driver")


def _values(rows, key: str, device: str | None = None) -> list[str]:
    return sorted({str(r.env[key]) for r in rows if isinstance(r.env, dict) and r.env.get(key) is not None
                   and (device is None or r.device == device)})


def differences(baseline: Sequence, current: Sequence) -> list[str]:
    """One line per environment fact that differs between the files, e.g.
    ``torch: 2.3.0 (BASELINE) vs 2.4.1 (CURRENT)``; empty when none does (or neither file records it)."""
    out = []
    for key in VERSION_KEYS:
        a, b = _values(baseline, key), _values(current, key)
        if a and b and a != b:
            out.append(f"{key.replace('_', '-')}: {', '.join(a)} (BASELINE) vs {', '.join(b)} (CURRENT)")
    devices = sorted({r.device for r in baseline} & {r.device for r in current})
    for device in devices:
        for key in DEVICE_KEYS:
            a, b = _values(baseline, key, device), _values(current, key, device)
            if a and b and a != b:
                out.append(f"{device} {key.replace('_', ' ')}: {', '.join(a)} (BASELINE) vs {', '.join(b)} (CURRENT)")
    return out
