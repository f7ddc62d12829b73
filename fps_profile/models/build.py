"""A model by name, with its weights: what every backend and ``fps-profile select`` build.

``name`` is a timm model, an ``hf:`` language model or a user factory
(:func:`fps_profile.models.create_model`); ``weights`` is None (random initialisation, drawn
from the global generators: seed them first, :mod:`fps_profile.models.seeding`),
``"pretrained"`` (timm's, :mod:`fps_profile.models.pretrained`) or a state-dict file
(:mod:`fps_profile.models.weights`). ``num_classes`` is the task's (a data set's classes);
a classifier of another size in the weights keeps its random initialisation, and the
provenance says so.

On the ``meta`` device (the sim builds there) weights are only checked: a file must fit the
model (the same one-line errors), timm must know pretrained weights for the name; nothing
is read into tensors that have no storage.
"""

from __future__ import annotations

import torch
from torch import nn

from fps_profile.models.weights import PRETRAINED, WeightsInfo, check_weights_spec, load_weights_file


def check_sources(name: str, weights: str | None = None) -> None:
    """Fail with one line unless ``name`` builds (a known timm/hf name, a factory that is found) and
    ``weights`` is None, ``pretrained`` for a timm name, or an existing weights file."""
    from fps_profile.models import check_model_name
    from fps_profile.models.pretrained import pretrained_source

    check_model_name(name)
    if weights is None:
        return
    check_weights_spec(weights)
    if weights == PRETRAINED:
        pretrained_source(name)  # timm has weights for it (no download here)


def _class_kwargs(name: str, num_classes: int | None) -> dict:
    from fps_profile.models.hf import is_hf_name

    return {"num_classes": num_classes} if num_classes is not None and not is_hf_name(name) else {}


def build_model(name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                image_size: int | None = None, num_classes: int | None = None, weights: str | None = None
                ) -> tuple[nn.Module, WeightsInfo | None]:
    """Build ``name`` on ``device`` in ``dtype`` with ``weights`` loaded.

    Returns:
        The model and where its weights came from (None: random initialisation).

    Raises:
        UserError: A bad name, weights that cannot be had or do not fit (one line each).
    """
    from fps_profile.models import create_model

    if weights == PRETRAINED:
        from fps_profile.models.pretrained import create_pretrained

        model, info = create_pretrained(name, image_size=image_size, num_classes=num_classes)
        return model.to(device=device, dtype=dtype), info
    model = create_model(name, device=device, dtype=dtype, image_size=image_size, **_class_kwargs(name, num_classes))
    if weights is None:
        return model, None
    return model, load_weights_file(model, weights, repr(name))


def check_weights_on(model: nn.Module, name: str, weights: str | None) -> WeightsInfo | None:
    """What :func:`build_model` would load, checked against ``model`` (any device, ``meta`` included)
    without changing it: a file's keys and shapes; for ``pretrained``, that timm has them.

    Raises:
        UserError: The weights do not fit, or cannot be had.
    """
    if weights is None:
        return None
    if weights == PRETRAINED:
        from fps_profile.models.pretrained import pretrained_source

        source = pretrained_source(name)
        return WeightsInfo(source.hub_id or source.url, None)
    if not all(t.device.type == "meta" for t in model.state_dict().values()):
        raise ValueError("check_weights_on checks a model on the meta device; load_weights_file loads one")
    return load_weights_file(model, weights, repr(name))
