"""The user's own model: ``package.module:factory`` or ``path/to/file.py:factory``.

A factory is any callable (function or class) returning an ``nn.Module``. It is
called with the keywords it names among ``num_classes``, ``image_size`` and
``img_size`` (timm's spelling), when the caller has a value for them; a
``**kwargs`` catch-all receives none of them, so a factory that forwards its
keywords to something else is never handed one it did not ask for.

``package.module`` is imported as ``import`` would, with the current directory
searched too (as ``python -m`` does); ``file.py`` is executed as a module of its
own, with its folder on ``sys.path`` while it is loaded and while the factory
runs, so it can import its neighbours.

**Input size rule** (:func:`resolve_input_size`), first that applies:

1. an explicit ``input_size=(C, H, W)`` given by the caller;
2. the module's attribute ``input_size``, if it is a ``(C, H, W)`` triple of ints
   (an ``int`` there, e.g. an RNN's feature count, is not an image size);
3. timm's ``pretrained_cfg["input_size"]`` (a timm model the factory returns);
4. nothing declared: unknown, a one-line error asking for one of the above or
   for ``image_size``.

``image_size`` (``--image-size``) then replaces height and width, keeping the
channels (if none is declared: the first convolution's ``in_channels``, else 3).
The result is recorded as ``model.pretrained_cfg["input_size"]`` (timm's
convention, on a copy of any existing cfg), so everything that asks timm's
question, :func:`fps_profile.models.input_size`, the sim's fake batches and
timm's ``resolve_data_config``, gets the same answer.

What the selectors need of such a module is what they need of any: ``nn.Linear`` /
``nn.Conv2d`` weights to rank (:mod:`fps_profile.selection.scope`), a classifier found by
``get_classifier()`` or a name containing ``head``, and, for GPS's default
contrastive loss only, timm's ``forward_features`` / ``forward_head(pre_logits=True)``
(else GPS with ``loss="ce"``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from fps_profile.errors import UserError, did_you_mean

#: Keywords offered to a factory that names them.
OFFERED = ("num_classes", "image_size", "img_size")
# timm's own "prefix:rest" model names, never factories.
_TIMM_PREFIXES = ("hf-hub", "hf_hub", "local-dir", "timm")


@dataclass(frozen=True)
class FactorySpec:
    """A parsed factory name.

    Attributes:
        name: The name as given.
        target: The module path (``pkg.mod``) or the file path (``dir/file.py``).
        attr: The attribute, possibly dotted (``Class.create``).
        is_file: Whether ``target`` is a file.
    """

    name: str
    target: str
    attr: str
    is_file: bool


def _dotted(text: str) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def parse_factory_name(name: str) -> FactorySpec | None:
    """``name`` split into module or file and attribute; None unless it has the factory form."""
    from fps_profile.models.hf import is_hf_name

    if not isinstance(name, str) or is_hf_name(name):
        return None
    target, sep, attr = name.rpartition(":")
    if not sep or not target or not _dotted(attr) or target.lower() in _TIMM_PREFIXES:
        return None
    if target.endswith(".py") or "/" in target or os.sep in target:
        return FactorySpec(name, target, attr, True)
    return FactorySpec(name, target, attr, False) if _dotted(target) else None


def is_factory_name(name: str) -> bool:
    """True for ``package.module:factory`` and ``path/to/file.py:factory``."""
    return parse_factory_name(name) is not None


@contextlib.contextmanager
def _on_path(folder: str) -> Iterator[None]:
    """``folder`` first on ``sys.path`` inside the block (unless it is there already)."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


_FILE_MODULES: dict[tuple[str, int], object] = {}


def _load_file(spec: FactorySpec):
    path = Path(spec.target).expanduser()
    if not path.is_file():
        raise UserError(f"model {spec.name!r}: file {spec.target!r} does not exist")
    if path.suffix != ".py":
        raise UserError(f"model {spec.name!r}: {spec.target!r} is not a Python file (.py)")
    path = path.resolve()
    key = (str(path), path.stat().st_mtime_ns)
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    # A name of its own per file, so two model.py files never shadow each other.
    mod_name = f"_fps_profile_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    loader_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[mod_name] = module  # dataclasses and pickling look their module up here
    try:
        with _on_path(str(path.parent)):
            loader_spec.loader.exec_module(module)
    except BaseException as exc:  # SystemExit too: a file that calls sys.exit() is a bad model file
        sys.modules.pop(mod_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UserError(f"model {spec.name!r}: loading {spec.target!r} failed: {first_line(exc)}") from exc
    _FILE_MODULES[key] = module
    return module


def _import(spec: FactorySpec):
    with _on_path(os.getcwd()):
        try:
            return importlib.import_module(spec.target)
        except ModuleNotFoundError as exc:
            parts = spec.target.split(".")
            if exc.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
                raise UserError(f"model {spec.name!r}: module {spec.target!r} is not importable "
                                f"(no module named {exc.name!r})") from None
            raise UserError(f"model {spec.name!r}: importing {spec.target!r} failed: {first_line(exc)}") from exc
        except Exception as exc:  # noqa: BLE001 - a user module raises anything at import
            raise UserError(f"model {spec.name!r}: importing {spec.target!r} failed: {first_line(exc)}") from exc


def _folder(spec: FactorySpec) -> str:
    return str(Path(spec.target).expanduser().resolve().parent) if spec.is_file else os.getcwd()


def check_factory_name(name: str) -> Callable[..., nn.Module]:
    """Load the module and find the factory, without calling it.

    Returns:
        The factory.

    Raises:
        UserError: Not a factory name, a missing file, a module that cannot be imported,
            no such attribute, or an attribute that is not callable (one line each).
    """
    spec = parse_factory_name(name)
    if spec is None:
        raise UserError(f"{name!r} is not a model factory (package.module:factory or path/to/file.py:factory)")
    obj = _load_file(spec) if spec.is_file else _import(spec)
    where = repr(spec.target)
    for i, part in enumerate(spec.attr.split(".")):
        if not hasattr(obj, part):
            known = [n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None))]
            err = did_you_mean(part, known, "attribute", show_known=False)
            raise UserError(f"model {name!r}: {where} has no {str(err)[len('unknown '):]}")
        obj = getattr(obj, part)
        where = f"{spec.target}:{'.'.join(spec.attr.split('.')[:i + 1])}"
    if not callable(obj):
        raise UserError(f"model {name!r}: {where} is a {type(obj).__name__}, not a callable returning a model")
    return obj


def _accepted(fn: Callable) -> set[str]:
    """The keywords of :data:`OFFERED` that ``fn`` names as parameters."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return set()
    return {n for n, p in params.items() if n in OFFERED and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _declared_size(model: nn.Module) -> tuple[int, int, int] | None:
    attr = getattr(model, "input_size", None)
    if isinstance(attr, (tuple, list)) and len(attr) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in attr):
        return tuple(attr)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    if isinstance(cfg, dict) and cfg.get("input_size"):
        return tuple(int(v) for v in cfg["input_size"])
    return None


def _first_channels(model: nn.Module) -> int:
    for module in model.modules():
        channels = getattr(module, "in_channels", None)
        if isinstance(channels, int) and channels > 0:
            return channels
    return 3


def resolve_input_size(model: nn.Module, *, image_size: int | None = None,
                       input_size: tuple[int, int, int] | None = None, name: str = "the model"
                       ) -> tuple[int, int, int]:
    """``(C, H, W)`` that ``model`` takes, by the rule in the module docstring.

    Raises:
        UserError: A malformed ``input_size``, or nothing declares a size and no ``image_size`` is given.
    """
    if input_size is not None:
        if not (isinstance(input_size, (tuple, list)) and len(input_size) == 3
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)):
            raise UserError(f"input size must be three integers >= 1 (channels, height, width), not {input_size!r}")
        declared = tuple(input_size)
    else:
        declared = _declared_size(model)
    if image_size is not None:
        return (declared[0] if declared else _first_channels(model), image_size, image_size)
    if declared is None:
        raise UserError(f"cannot tell what input {name} takes: give an image size (--image-size), or set "
                        "input_size = (C, H, W) on the module the factory returns")
    return declared


def build_factory_model(name: str, *, num_classes: int | None = None, image_size: int | None = None,
                        input_size: tuple[int, int, int] | None = None, **kwargs) -> nn.Module:
    """Call the factory of ``name`` and check what it returns.

    Build it under ``torch.device("meta")`` for the sim (a model without storage);
    it is not moved anywhere here.

    Args:
        name: ``package.module:factory`` or ``path/to/file.py:factory``.
        num_classes: Classes of the task; passed if the factory names ``num_classes``,
            else applied with ``model.reset_classifier`` where the model has one.
        image_size: Input height and width; passed as ``image_size`` / ``img_size`` if the
            factory names them, and the input size's height and width in any case.
        input_size: ``(C, H, W)``, overriding what the model declares (see the module docstring).
        **kwargs: Passed to the factory as they are.

    Returns:
        The model, with its input size recorded as ``pretrained_cfg["input_size"]``.

    Raises:
        UserError: :func:`check_factory_name`'s errors, the factory raised, returned
            something that is not an ``nn.Module``, builds another number of classes
            than asked for, or its input size cannot be told.
    """
    from fps_profile.models.checks import check_image_size

    check_image_size(image_size)
    fn = check_factory_name(name)
    accepted = _accepted(fn)
    values = {"num_classes": num_classes, "image_size": image_size, "img_size": image_size}
    call = {k: v for k, v in values.items() if k in accepted and v is not None}
    call.update(kwargs)
    try:
        with _on_path(_folder(parse_factory_name(name))):
            model = fn(**call)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code raises anything
        raise UserError(f"model {name!r}: the factory raised {first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise UserError(f"model {name!r}: the factory returned a {type(model).__name__}, not a torch.nn.Module")
    if num_classes is not None and "num_classes" not in call:
        built = getattr(model, "num_classes", None)
        if built != num_classes and callable(getattr(model, "reset_classifier", None)):
            model.reset_classifier(num_classes)
        elif isinstance(built, int) and built != num_classes:
            raise UserError(f"model {name!r}: the factory builds {built} classes, {num_classes} are needed, and "
                            "it takes no num_classes keyword")
    size = resolve_input_size(model, image_size=image_size, input_size=input_size, name=repr(name))
    cfg = getattr(model, "pretrained_cfg", None)
    model.pretrained_cfg = {**(cfg if isinstance(cfg, dict) else {}), "input_size": size}
    return model
