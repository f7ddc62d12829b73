"""Worker entry point: ``python -m fps_profile.run.worker CELL_JSON RESULT_JSON``.

Measures one cell in this fresh process and writes its row as JSON. Kept
separate from the CLI so a measurement imports only what it needs. It dies
with the process that started it (``$FPS_PROFILE_PARENT``).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m fps_profile.run.worker CELL_JSON RESULT_JSON", file=sys.stderr)
        return 2
    from fps_profile.procs import die_with_parent

    die_with_parent()
    from fps_profile.measure.runner import measure_to_file

    measure_to_file(Path(argv[0]).read_text(), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
