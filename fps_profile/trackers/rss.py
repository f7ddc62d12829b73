"""Host resident-set high-water mark of this process.

On Linux the kernel's high-water mark (``VmHWM``) is reset by writing ``5`` to
``/proc/self/clear_refs``, so a region's peak excludes imports and set-up.
Elsewhere ``getrusage`` gives the whole process's high-water mark instead
(``reset_ok`` is then False).
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def _vm_hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_high_water() -> int:
    """The process's RSS high-water mark, bytes."""
    hwm = _vm_hwm()
    if hwm is not None:
        return hwm
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


class RssPeak:
    """RSS high-water mark over a region (bytes in ``peak`` after exit)."""

    def __init__(self) -> None:
        self.peak: int | None = None
        self.reset_ok = False

    def __enter__(self) -> RssPeak:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset_ok = True
        except OSError:
            self.reset_ok = False
        return self

    def __exit__(self, *exc) -> None:
        self.peak = rss_high_water()
