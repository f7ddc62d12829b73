"""Text for the ``hf:`` language models: a ``.txt`` or ``.jsonl`` file, tokenised, cut into sequences.

A ``.txt`` file is one document; a ``.jsonl`` file has one JSON object per line
whose ``text`` field is a document. Tokens:

* **byte-level** (no tokenizer): each UTF-8 byte is a token id 0-255, documents
  joined by a newline; fits the tiny configs (``hf:llama-tiny``, ``hf:gpt2-tiny``,
  vocabulary 256);
* **a tokenizer from a local path**: ``transformers.AutoTokenizer.from_pretrained(path,
  local_files_only=True)``, each document followed by its EOS token where it has one.

The token stream is cut into consecutive sequences of ``seq_len`` tokens (the
remainder dropped); a seeded shuffle of the sequences puts ``val_fraction`` of them
(at least one sequence stays for training) into validation. A batch is
``(ids, ids)``, ``[batch, seq_len]`` int64, as :func:`fps_profile.models.hf.token_batches` gives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fps_profile.data.split import check_fraction, draw
from fps_profile.errors import UserError

SUFFIXES = (".txt", ".jsonl")
BYTES = "bytes"


def read_documents(path: Path, spec: str) -> list[str]:
    """The documents of a ``.txt`` (one) or ``.jsonl`` (one per non-empty line) file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"data {spec!r} is not UTF-8 text (byte {exc.start})") from None
    if path.suffix == ".txt":
        return [text]
    docs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"data {spec!r} line {number} is not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f"data {spec!r} line {number} has no string field 'text'")
        docs.append(record["text"])
    return docs


def tokenize(docs: list[str], tokenizer: str | None, spec: str) -> tuple[torch.Tensor, str]:
    """The token stream of ``docs`` (int64) and a description of the tokenizer."""
    if tokenizer in (None, BYTES):
        data = "\n".join(docs).encode("utf-8")
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).long() if data else \
            torch.empty(0, dtype=torch.long), BYTES
    from fps_profile.models.hf import require_transformers

    transformers = require_transformers()
    if not Path(tokenizer).is_dir():
        raise UserError(f"tokenizer {tokenizer!r}: no such directory (a tokenizer saved with save_pretrained)")
    try:
        tok = transformers.AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types
        text = str(exc).strip().splitlines()
        raise UserError(f"tokenizer {tokenizer!r} cannot be loaded: {type(exc).__name__}: "
                        f"{text[0] if text else ''}".rstrip(": ")) from None
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    ids = [i for doc in docs for i in tok(doc, add_special_tokens=False)["input_ids"] + eos]
    return torch.tensor(ids, dtype=torch.long), str(Path(tokenizer).resolve())


@dataclass
class TextData:
    """A token stream with a seeded split of its sequences.

    Build it with :func:`fps_profile.data.load_data`.

    Attributes:
        name: The file asked for.
        tokens: ``[T]`` int64 token ids.
        tokenizer: ``bytes`` or the tokenizer's path.
        sha256: Hash of the file's bytes.
        val_fraction: Share of the sequences kept for validation.
        split_seed: Seed of the split.
    """

    name: str
    tokens: torch.Tensor
    tokenizer: str
    sha256: str
    val_fraction: float = 0.2
    split_seed: int = 0
    kind: str = field(default="text", init=False)
    num_classes = None  # language modelling has no classes (a class attribute, not a field)

    def __post_init__(self) -> None:
        check_fraction(self.val_fraction)

    def sequences(self, seq_len: int, split: str = "train") -> torch.Tensor:
        """The ``[n, seq_len]`` sequences of ``split`` (``train`` or ``val``)."""
        if split not in ("train", "val"):
            raise UserError(f"unknown split {split!r} (train, val)")
        n = len(self.tokens) // seq_len
        if n == 0:
            raise UserError(f"data {self.name!r} has {len(self.tokens)} tokens, fewer than one sequence of {seq_len}")
        chunks = self.tokens[:n * seq_len].view(n, seq_len)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        n_val = min(round(n * self.val_fraction), n - 1)
        return chunks[torch.sort(order[:n_val] if split == "val" else order[n_val:]).values]

    def batches(self, model: nn.Module, batch_size: int, num_batches: int = 1, seed: int = 0,
                device: str | torch.device | None = None, seq_len: int | None = None, split: str = "train"
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``num_batches`` batches of ``batch_size`` sequences drawn (seeded) from ``split``.

        Raises:
            UserError: A sequence length the model does not allow, token ids beyond its
                vocabulary, or too little text for one sequence.
        """
        from fps_profile.models.hf import DEFAULT_SEQ_LEN, check_seq_len, vocab_size

        seq_len = DEFAULT_SEQ_LEN if seq_len is None else seq_len
        check_seq_len(model, seq_len)
        vocab = vocab_size(model)
        if len(self.tokens) and int(self.tokens.max()) >= vocab:
            hint = "; give a tokenizer that matches it" if self.tokenizer == BYTES else ""
            raise UserError(f"data {self.name!r} ({self.tokenizer}) has token ids up to {int(self.tokens.max())}, "
                            f"beyond the model's vocabulary of {vocab}{hint}")
        device = torch.device(device) if device is not None else next(model.parameters()).device
        seqs = self.sequences(seq_len, split)
        idx = draw(torch.arange(len(seqs)), batch_size, num_batches, seed, f"the {split} split of {self.name!r}")
        out = []
        for i in idx:
            ids = seqs[i].to(device)
            out.append((ids, ids))
        return out

    def provenance(self) -> dict:
        """What the data was, for a result row."""
        return {"data": self.name, "data_sha256": self.sha256, "data_tokenizer": self.tokenizer,
                "data_tokens": len(self.tokens), "data_split_seed": self.split_seed,
                "data_val_fraction": self.val_fraction}
