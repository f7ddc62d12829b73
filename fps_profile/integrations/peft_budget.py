"""The ``shira:R`` budget and the ``shira`` scope: masks that PEFT's SHiRA adapter holds exactly.

Both are defined with the other budgets and scopes (:mod:`fps_profile.selection.shira`,
:mod:`fps_profile.selection.scope`), so that rows, the sim and the CLI know them without
``peft``; this module names them where the PEFT integration's users look.

:class:`ShiraRank` keeps the ``r * (m + n)`` best-scoring entries of each ranked ``m x n``
tensor (any selector's scores), SHiRA's size. :data:`SHIRA_SCOPE` (``scope="shira"``)
ranks only ``nn.Linear`` weights and trains whole only the classifier (PEFT's
``modules_to_save``); biases, norms, layer scales, position tables and convolutions
stay frozen (PEFT cannot train them beside SHiRA, see :mod:`fps_profile.integrations.peft`).
"""

from __future__ import annotations

from fps_profile.selection.scope import SCOPES
from fps_profile.selection.shira import ShiraRank

#: Linear weights ranked; the classifier trained whole; everything else frozen (``scope="shira"``).
SHIRA_SCOPE = SCOPES.get("shira")

__all__ = ["SHIRA_SCOPE", "ShiraRank"]
