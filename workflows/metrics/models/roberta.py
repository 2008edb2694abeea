"""RoBERTa (Liu et al. 2019) text encoder and its byte-level BPE tokenizer, for LAION-CLAP's text tower.

Follows laion_clap 1.1.7 with transformers 4.57.1; checked against their outputs (tests/test_clap.py).

LAION-CLAP's text branch is Hugging Face's `RobertaModel` built from `roberta-base` and then
fine-tuned, so its weights sit in the CLAP checkpoint under `text_branch.` with Hugging Face's
parameter names (`embeddings.word_embeddings`, `encoder.layer.<i>.attention.self.query`, ...,
`pooler.dense`); this module uses the same names so they load strictly.

Model facts (roberta-base): 12 post-LayerNorm layers, hidden 768, 12 heads, feed-forward 3072
with exact (erf) GELU, LayerNorm eps 1e-5, a 50265-token vocabulary, learned absolute positions
(514 rows) and one token type. Positions count from `pad_id + 1` and skip padding tokens: a
token's position is pad_id + (number of non-pad tokens up to and including it); pad tokens get
pad_id. CLAP reads `pooler_output` = tanh(dense(hidden state of the first token, `<s>`)).

Tokenizer (GPT-2's byte-level BPE with RoBERTa's vocab.json + merges.txt): the text is split
on the special-token strings first (`<mask>` also eats the white space on its left), each other
piece is cut by GPT-2's pre-tokenisation pattern, every UTF-8 byte of a chunk is mapped to a
printable character (the byte<->unicode table), BPE merges are applied by rank, and pieces are
looked up in the vocabulary (`<unk>` if absent). An encoding is `<s> tokens </s>`, truncated to
`max_length` (77 in CLAP, so at most 75 text tokens) and right-padded with `<pad>`; the attention
mask is 1 on real tokens. This matches `RobertaTokenizer(...)(texts, padding="max_length",
truncation=True, max_length=77)` as CLAP's `hook.py` calls it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ROBERTA_BASE", "ByteLevelBPETokenizer", "RobertaConfig", "RobertaModel", "bytes_to_unicode"]

# GPT-2's pre-tokenisation: contractions, letter runs, digit runs, other symbols (each with at
# most one leading space), then white space (trailing runs keep their last space for the next word)
_PRETOKENIZE = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@dataclass(frozen=True)
class RobertaConfig:
    vocab_size: int = 50265
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    max_positions: int = 514  # 512 + the pad_id offset
    type_vocab_size: int = 1
    pad_id: int = 1
    layer_norm_eps: float = 1e-5

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RobertaConfig:
        return cls(**data)


ROBERTA_BASE = RobertaConfig()


# ------------------------------------------------------------------------------ tokenizer


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> character table: printable Latin-1 bytes map to themselves,
    the other 68 bytes (controls, space, ...) to code points 256, 257, ... in byte order, so no
    BPE symbol is white space or a control character."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\xa1"), ord("\xac") + 1),
        *range(ord("\xae"), ord("\xff") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ByteLevelBPETokenizer:
    """RoBERTa's tokenizer from its `vocab.json` and `merges.txt` (see the module docstring)."""

    def __init__(
        self,
        vocab_path: str | Path,
        merges_path: str | Path,
        max_length: int = 77,
        bos: str = "<s>",
        eos: str = "</s>",
        pad: str = "<pad>",
        unk: str = "<unk>",
        mask: str = "<mask>",
    ) -> None:
        import regex

        self.vocab: dict[str, int] = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        lines = Path(merges_path).read_text(encoding="utf-8").split("\n")
        # as GPT-2/RoBERTa read it: the first line is the "#version" header, the last the empty
        # string after the final newline
        merges = [tuple(line.split()) for line in lines[1:-1]]
        self.ranks: dict[tuple[str, str], int] = {m: i for i, m in enumerate(merges) if len(m) == 2}
        for name in (bos, eos, pad, unk, mask):
            if name not in self.vocab:
                raise ValueError(f"{vocab_path} has no {name!r} token; is it RoBERTa's vocab.json?")
        if max_length < 2:
            raise ValueError(f"max_length must leave room for <s> and </s>, got {max_length}")
        self.max_length = max_length
        self.bos_id, self.eos_id = self.vocab[bos], self.vocab[eos]
        self.pad_id, self.unk_id = self.vocab[pad], self.vocab[unk]
        self._mask = mask
        self._specials = sorted({bos, eos, pad, unk, mask}, key=len, reverse=True)
        self._split_specials = regex.compile("(" + "|".join(regex.escape(s) for s in self._specials) + ")")
        self._pretokenize = regex.compile(_PRETOKENIZE)
        self._byte_chars = bytes_to_unicode()
        self._cache: dict[str, list[str]] = {}

    def tokenize(self, text: str) -> list[str]:
        """BPE pieces (special tokens as themselves), without `<s>`/`</s>`."""
        parts = [p for p in self._split_specials.split(text)]
        pieces: list[str] = []
        for i, part in enumerate(parts):
            if part in self._specials:
                pieces.append(part)
                continue
            if i + 1 < len(parts) and parts[i + 1] == self._mask:
                part = part.rstrip()  # <mask> is an lstrip token: it takes the spaces before it
            for chunk in self._pretokenize.findall(part):
                mapped = "".join(self._byte_chars[b] for b in chunk.encode("utf-8"))
                pieces.extend(self._bpe(mapped))
        return pieces

    def token_ids(self, text: str) -> list[int]:
        return [self.vocab.get(p, self.unk_id) for p in self.tokenize(text)]

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (input_ids, attention_mask), both (N, max_length) int64."""
        ids = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), self.max_length), dtype=np.int64)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__} at {row}")
            tokens = [self.bos_id, *self.token_ids(text)[: self.max_length - 2], self.eos_id]
            ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def _bpe(self, word: str) -> list[str]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = list(word)
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):  # merge every occurrence, left to right
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        if len(self._cache) < 100_000:
            self._cache[word] = symbols
        return symbols


# ------------------------------------------------------------------------------ model


class _Embeddings(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.pad_id = config.pad_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden, padding_idx=config.pad_id)
        self.position_embeddings = nn.Embedding(config.max_positions, config.hidden, padding_idx=config.pad_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden)
        self.LayerNorm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        real = (input_ids != self.pad_id).long()
        positions = torch.cumsum(real, dim=1) * real + self.pad_id
        if int(positions.max()) >= self.position_embeddings.num_embeddings:
            raise ValueError(
                f"sequence of {int(real.sum(1).max())} tokens is longer than the "
                f"{self.position_embeddings.num_embeddings - self.pad_id - 1} positions of the model"
            )
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = x + self.token_type_embeddings.weight[0]  # CLAP passes no token types: all type 0
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.query = nn.Linear(config.hidden, config.hidden)
        self.key = nn.Linear(config.hidden, config.hidden)
        self.value = nn.Linear(config.hidden, config.hidden)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x)), attn_mask=keep[:, None, None, :]
        )
        return out.transpose(1, 2).reshape(b, n, c)


class _DenseNorm(nn.Module):
    """dense -> residual add -> LayerNorm (Hugging Face's `...Output` blocks)."""

    def __init__(self, din: int, config: RobertaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(din, config.hidden)
        self.LayerNorm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.self = _SelfAttention(config)
        self.output = _DenseNorm(config.hidden, config)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, keep), x)


class _Intermediate(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden, config.intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class _Layer(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.attention = _Attention(config)
        self.intermediate = _Intermediate(config)
        self.output = _DenseNorm(config.intermediate, config)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, keep)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(config) for _ in range(config.layers))


class _Pooler(nn.Module):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden, config.hidden)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class RobertaModel(nn.Module):
    """RoBERTa encoder with its pooler (inference only: no dropout)."""

    def __init__(self, config: RobertaConfig = ROBERTA_BASE) -> None:
        super().__init__()
        self.config = config
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)
        self.pooler = _Pooler(config)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, L) token ids and 0/1 mask -> (last hidden states (N, L, hidden), pooled (N, hidden))."""
        keep = (input_ids != -1) if attention_mask is None else attention_mask.bool()
        x = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            x = layer(x, keep)
        return x, self.pooler(x)
