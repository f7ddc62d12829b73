"""``hf:`` models: causal language models built from a config, with random weights, and token batches.

``hf:<name>`` is one of the configs shipped in ``fps_profile/models/configs/``
(published hyper-parameters of well-known models, and tiny variants for
tests: :func:`shipped`); ``hf:<path>.json`` is any local ``config.json``.
Nothing is downloaded: ``transformers.AutoModelForCausalLM.from_config``
builds the architecture with random weights, without a KV cache
(``use_cache=False``), with PyTorch's scaled-dot-product attention (``sdpa``).

A batch is ``(input_ids, labels)``: ``[batch, seq_len]`` int64 token ids,
uniform over the vocabulary, and labels that are the same tensor (the model
shifts them to next-token targets inside its loss).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from fps_profile.errors import UserError, did_you_mean

PREFIX = "hf:"
#: Tokens per sequence of a language-model cell when none is given (``--seq-len``).
DEFAULT_SEQ_LEN = 512
_INSTALL = "pip install 'fps-profile[llm]'"


def is_hf_name(name: str) -> bool:
    """True for a language-model name (``hf:<name>`` or ``hf:<path>.json``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


@functools.cache
def shipped() -> dict[str, str]:
    """Shipped config names -> where their hyper-parameters come from (the ``_source`` line)."""
    out = {}
    for entry in sorted(resources.files("fps_profile.models").joinpath("configs").iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            out[entry.name[:-5]] = json.loads(entry.read_text()).get("_source", "")
    return out


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise UserError(f"language models (hf:...) need transformers: {_INSTALL}") from None
    return transformers


def load_config_dict(name: str) -> dict:
    """The raw config of ``hf:<name>`` (shipped) or ``hf:<path>.json`` (local), keys starting with ``_`` dropped.

    Raises:
        UserError: Unknown name (with suggestions), a missing or malformed file.
    """
    if not is_hf_name(name):
        raise UserError(f"{name!r} is not a language model name (hf:<name> or hf:<path>.json)")
    rest = name[len(PREFIX):]
    if rest in shipped():
        text = resources.files("fps_profile.models").joinpath("configs", f"{rest}.json").read_text()
        where = f"shipped config {rest!r}"
    elif rest.endswith(".json") or "/" in rest:
        path = Path(rest)
        if not path.is_file():
            raise UserError(f"model {name!r}: config file {rest!r} does not exist")
        text, where = path.read_text(), repr(rest)
    else:
        raise did_you_mean(rest, list(shipped()), "language model config (hf:<name>, or hf:<path>.json)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"model {name!r}: {where} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise UserError(f"model {name!r}: {where} has no 'model_type' (a transformers config.json has one)")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def check_hf_name(name: str) -> None:
    """Fail with one line unless ``name`` is a config this installation can read (its ``model_type``
    known to transformers, its values accepted): checked before anything is measured."""
    build_config(name)


def build_config(name: str):
    """The ``transformers`` config of ``name``: no KV cache, SDPA attention."""
    transformers = require_transformers()
    data = load_config_dict(name)
    model_type = data.pop("model_type")
    data.pop("architectures", None)
    known = transformers.CONFIG_MAPPING.keys()
    if model_type not in known:
        error = did_you_mean(str(model_type), known, "model_type", show_known=False)
        raise UserError(f"model {name!r}: {error} (transformers {transformers.__version__} knows {len(known)}; "
                        "transformers.CONFIG_MAPPING lists them)")
    try:
        config = transformers.AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"transformers {transformers.__version__} cannot read the config of {name!r}: "
                        f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    config.use_cache = False
    return config


def build_lm(name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A randomly initialised causal LM of ``name`` in ``dtype``, on the current default device.

    Build it under ``torch.device("meta")`` for a model without storage.

    Raises:
        UserError: Unknown name, transformers missing, or transformers cannot build it.
    """
    transformers = require_transformers()
    config = build_config(name)
    try:
        model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - a model's constructor raises anything
        text = str(exc).strip().splitlines()
        raise UserError(f"transformers cannot build {name!r}: {type(exc).__name__}: "
                        f"{text[0] if text else ''}".rstrip(": ")) from exc
    model.loss_type = "ForCausalLM"  # what transformers falls back to for e.g. GPT2LMHeadModel, without its warning
    return model.to(dtype=dtype)


def vocab_size(model: nn.Module) -> int:
    return int(model.config.vocab_size)


def max_positions(model: nn.Module) -> int | None:
    """Longest sequence the model's position table or RoPE setting allows (None: unknown)."""
    return config_max_positions(model.config)


def check_name_seq_len(name: str, seq_len: int | None) -> None:
    """Fail with one line unless language model ``name`` takes sequences of ``seq_len`` tokens
    (None: :data:`DEFAULT_SEQ_LEN`), read from its config before anything is built."""
    seq_len = DEFAULT_SEQ_LEN if seq_len is None else seq_len
    limit = config_max_positions(build_config(name))
    if limit is not None and seq_len > limit:
        raise UserError(f"sequence length {seq_len} is longer than {name!r} allows ({limit} positions)")


def config_max_positions(cfg) -> int | None:
    """Longest sequence a ``transformers`` config allows (None: it does not say)."""
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int):
            return value
    return None


def check_seq_len(model: nn.Module, seq_len: int, name: str = "the model") -> None:
    """Fail with one line unless ``seq_len`` is an integer in ``[1, max_positions]``."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise UserError(f"sequence length must be an integer >= 1, not {seq_len!r}")
    limit = max_positions(model)
    if limit is not None and seq_len > limit:
        raise UserError(f"sequence length {seq_len} is longer than {name} allows ({limit} positions)")


def token_batches(model: nn.Module, batch_size: int, seq_len: int | None, num_batches: int = 1, seed: int = 0,
                  device: str | torch.device | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Uniform random token ids ``[batch_size, seq_len]`` (int64), labels the same tensor.

    Args:
        model: The language model (sets the vocabulary and, by default, the device).
        batch_size: Sequences per batch.
        seq_len: Tokens per sequence (None: :data:`DEFAULT_SEQ_LEN`).
        num_batches: Number of batches.
        seed: Seed, so the same call gives the same tokens.
        device: Defaults to the model's device.
    """
    seq_len = DEFAULT_SEQ_LEN if seq_len is None else seq_len
    check_seq_len(model, seq_len)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_batches):
        ids = torch.randint(0, vocab_size(model), (batch_size, seq_len), generator=gen).to(device)
        out.append((ids, ids))
    return out


def empty_token_batch(model: nn.Module, batch_size: int, seq_len: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A token batch shaped as :func:`token_batches` makes one, without values (for the sim)."""
    seq_len = DEFAULT_SEQ_LEN if seq_len is None else seq_len
    check_seq_len(model, seq_len)
    ids = torch.empty(batch_size, seq_len, dtype=torch.long)
    return ids, ids
