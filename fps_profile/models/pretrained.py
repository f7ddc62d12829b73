"""timm's pretrained weights (``--weights pretrained``), loaded by timm itself, with provenance.

timm's ``create_model(name, pretrained=True)`` does the loading (its checkpoint
filters, position-embedding resizing, the classifier dropped for another
``num_classes``). Around it: the file is looked for in the cache first and, when
there, handed to timm as a local file, so nothing contacts the hub; when it is
not there and no download can work (offline mode, the host does not resolve),
the call fails at once, in one line that says where it looked (hub id, file
names, cache dir), instead of after timm's minute of retries.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fps_profile.errors import UserError
from fps_profile.models.weights import PRETRAINED, WeightsInfo, first_line, file_sha256


@dataclass(frozen=True)
class PretrainedSource:
    """Where timm keeps the pretrained weights of a model name.

    Attributes:
        hub_id: Hugging Face hub id (``timm/resnet18.a1_in1k``), or None.
        filenames: Files of ``hub_id`` timm tries, in order.
        url: Download URL where there is no hub id, or None.
        cache_dir: Where a downloaded file is kept.
    """

    hub_id: str | None
    filenames: tuple[str, ...]
    url: str | None
    cache_dir: str

    def where(self) -> str:
        what = f"hub id {self.hub_id!r} ({', '.join(self.filenames)})" if self.hub_id else f"URL {self.url}"
        return f"{what} in cache dir {self.cache_dir}"

    def cached_file(self) -> str | None:
        """The local file if it is in the cache, else None (nothing is downloaded)."""
        if self.hub_id:
            from huggingface_hub import try_to_load_from_cache

            repo, _, revision = self.hub_id.partition("@")
            for filename in self.filenames:
                found = try_to_load_from_cache(repo, filename, cache_dir=self.cache_dir, revision=revision or None)
                if isinstance(found, str):
                    return found
            return None
        path = Path(self.cache_dir) / Path(self.url.split("?")[0]).name
        return str(path) if path.is_file() else None


def pretrained_source(name: str, cache_dir: str | os.PathLike | None = None) -> PretrainedSource:
    """Where timm's pretrained weights of ``name`` (``arch`` or ``arch.tag``) are.

    Raises:
        UserError: Not a timm name, or timm has no pretrained weights for it.
    """
    from timm.models import get_pretrained_cfg

    from fps_profile.models import check_model_name
    from fps_profile.models.factory import is_factory_name

    if is_factory_name(name) or name.startswith("hf:"):
        raise UserError(f"--weights {PRETRAINED} applies to timm model names, not to {name!r}; give a weights file")
    check_model_name(name)
    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError as exc:
        raise UserError(f"timm has no pretrained weights for {name!r}: {first_line(exc)}") from None
    hub_id, url = (cfg.hf_hub_id, cfg.url) if cfg is not None else (None, None)
    if not hub_id and not url:
        raise UserError(f"timm has no pretrained weights for {name!r}")
    if hub_id:
        from huggingface_hub import constants

        wanted = cfg.hf_hub_filename or "pytorch_model.bin"
        safe = ["model.safetensors"] if wanted == "pytorch_model.bin" else \
            [wanted[:-4] + ".safetensors"] if wanted.endswith(".bin") else []
        return PretrainedSource(hub_id, tuple(safe + [wanted]), None, str(cache_dir or constants.HF_HUB_CACHE))
    return PretrainedSource(None, (), url, str(cache_dir or Path(torch.hub.get_dir()) / "checkpoints"))


def _offline(source: PretrainedSource) -> str | None:
    """Why no download can work (None: try it)."""
    from huggingface_hub import constants

    if source.hub_id and constants.is_offline_mode():
        return "offline mode (HF_HUB_OFFLINE)"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy may reach what this machine cannot resolve
    host = "huggingface.co" if source.hub_id else (source.url.split("/")[2] if "://" in source.url else "")
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        return f"cannot reach {host} ({exc.strerror or exc})"
    return None


def create_pretrained(name: str, *, image_size: int | None = None, num_classes: int | None = None,
                      cache_dir: str | os.PathLike | None = None, **kwargs) -> tuple[nn.Module, WeightsInfo]:
    """``timm.create_model(name, pretrained=True)``: timm's own loading (its checkpoint filters,
    position-embedding resizing, classifier dropped for another ``num_classes``).

    A file already in the cache is loaded from there without contacting the hub;
    otherwise timm downloads it, unless no download can work (offline mode, the
    host does not resolve), which fails at once.

    Args:
        name: A timm model name (``arch`` or ``arch.tag``).
        image_size: Input height and width to build for (``img_size``), as :func:`fps_profile.models.build_timm`.
        num_classes: Classes of the task; a classifier of another size keeps its random init.
        cache_dir: Hub (or torch hub checkpoint) cache; default timm's.
        **kwargs: Passed to ``timm.create_model``.

    Raises:
        UserError: No pretrained weights, or they cannot be had or loaded; the message
            says where they were looked for (hub id and cache dir).
    """
    import timm

    from fps_profile.models.parts import find_classifier

    source = pretrained_source(name, cache_dir)
    found = source.cached_file()
    if found is None:
        why = _offline(source)
        if why:
            raise UserError(f"pretrained weights of {name!r} not found: looked for {source.where()}; {why}")
    args = dict(kwargs)
    if num_classes is not None:
        args["num_classes"] = num_classes
    if image_size is not None:
        args["img_size"] = image_size
    if found is not None:
        args["pretrained_cfg_overlay"] = {"file": found}
    else:
        args["cache_dir"] = source.cache_dir
    try:
        try:
            model = timm.create_model(name, pretrained=True, **args)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            args.pop("img_size")
            model = timm.create_model(name, pretrained=True, **args)
    except Exception as exc:  # noqa: BLE001 - hub, download and load errors of any type
        where = found or source.where()
        raise UserError(f"pretrained weights of {name!r} could not be loaded (looked for {where}): "
                        f"{first_line(exc)}") from None
    found = found or source.cached_file()
    reinit = ()
    pretrained_classes = (model.pretrained_cfg or {}).get("num_classes")
    if num_classes is not None and pretrained_classes is not None and num_classes != pretrained_classes:
        classifier = find_classifier(model)
        own = model.state_dict()
        # What timm dropped: the classifiers' weight and bias.
        reinit = tuple(k for m in classifier.modules for k in (f"{m}.weight", f"{m}.bias") if k in own)
    info = WeightsInfo(source.hub_id or source.url, file_sha256(found) if found else None, reinit, found)
    return model, info
