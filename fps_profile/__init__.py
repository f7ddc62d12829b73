"""fps-profile: what parameter selection for fine-tuning really costs.

Quick start::

    import fps_profile
    mask = fps_profile.select(model, batches, selector="fps", k=1)
    params = fps_profile.make_sparse_trainable(model, mask)
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.05)
"""

__version__ = "0.1.0"

from fps_profile.selection.budget import GlobalFraction, PerRowTopK
from fps_profile.errors import UserError
from fps_profile.selection.mask import Mask, MaskStats
from fps_profile.selection.scope import Role, Scope
from fps_profile.selection.select import select
from fps_profile.selection.selectors import Selector, Target, list_selectors
from fps_profile.selection.selectors import get as get_selector
from fps_profile.selection.selectors import register as register_selector
from fps_profile.selection.sparse import make_sparse_trainable, merge_sparse

__all__ = [
    "GlobalFraction", "Mask", "MaskStats", "PerRowTopK", "Role", "Scope", "Selector", "Target",
    "UserError", "get_selector", "list_selectors", "make_sparse_trainable", "merge_sparse",
    "register_selector", "select",
]
