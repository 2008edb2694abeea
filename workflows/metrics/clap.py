"""CLAP score for text-to-audio runs: cosine similarity of LAION-CLAP text and audio embeddings.

What MMAudio's av-benchmark reports as "LAION-CLAP-Score": `laion_clap.CLAP_Module(
enable_fusion=False, amodel="HTSAT-base")` with `music_speech_audioset_epoch_15_esc_89.98.pt`;
audio embeddings from `get_audio_embedding_from_data(wav_48k, use_tensor=True)`, text
embeddings from `get_text_embedding([caption])`, and the score is the mean over clips of the
cosine similarity of each clip's audio and text embeddings.

The model (`ClapModel`): HTS-AT audio tower (`htsat.py`) -> `audio_projection` (Linear 1024->512,
ReLU, Linear 512->512); RoBERTa-base text tower (`roberta.py`) pooled output -> `text_projection`
(Linear 768->512, ReLU, Linear 512->512); both L2-normalised. The checkpoint also holds the
`audio_transform` / `text_transform` MLPs and the two logit scales, used only by CLAP's
training loss; they are kept as parameters so every key of the file is consumed.

Audio preprocessing (`ClapPreprocess`), in av-benchmark's order:
  - av-benchmark's loader: mono, minus its mean (`remove_mean`), resampled to 48 kHz (done by
    the caller: `audio_embeddings` takes 48 kHz waveforms), cut to its `--audio_length`, 8 s by
    default (`max_seconds`);
  - `get_audio_embedding_from_data`: with `use_tensor=True` (av-benchmark) no quantisation; with
    numpy input, an int16 round trip (clip to [-1, 1], x * 32767 truncated to int16, / 32767)
    (`quantize`);
  - `get_audio_features(..., 480000, "rand_trunc", "repeatpad")`: a clip shorter than 10 s is
    tiled floor(480000 / L) times and zero-padded to 480000; a longer one is cropped to 10 s at a
    RANDOM offset in the reference. Here the crop starts at 0 (deterministic scores); with the
    default 8 s cut it never happens.

Loading (`load_clap`), as `CLAP_Module.load_ckpt`: the state dict is the file itself or its
`state_dict` entry; a `module.` prefix (DistributedDataParallel) is removed; the
`text_branch.embeddings.position_ids` buffer older transformers saved is dropped (it must be
0, 1, 2, ...). Everything else must match the model exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dub.workflows.metrics.embeddings import BackendUnavailable, available_weights, paired_cosine
from dub.workflows.metrics.weights import WeightsLocator

if TYPE_CHECKING:
    from dub.workflows.metrics.models.htsat import HTSATConfig
    from dub.workflows.metrics.models.roberta import RobertaConfig

__all__ = [
    "ROBERTA_MODEL",
    "ClapConfig",
    "ClapPreprocess",
    "ClapScorer",
    "build_clap",
    "clap_htsat_base",
    "clap_score",
    "clap_state_dict",
    "load_clap",
    "prepare_clap_audio",
]

SAMPLE_RATE = 48000
ROBERTA_MODEL = "roberta-base"  # registry model of RoBERTa's tokenizer files (vocab.json, merges.txt)
_DROPPED_BUFFERS = ("text_branch.embeddings.position_ids", "text_branch.embeddings.token_type_ids")


def clap_score(text_embeddings: np.ndarray, audio_embeddings: np.ndarray) -> np.ndarray:
    """Per-pair cosine similarity of (N, D) text and audio embeddings."""
    return paired_cosine(text_embeddings, audio_embeddings)


# ------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class ClapConfig:
    audio: HTSATConfig
    text: RobertaConfig
    joint_dim: int = 512
    context_length: int = 77  # tokenizer max_length in CLAP's hook

    def as_dict(self) -> dict:
        return {
            "audio": self.audio.as_dict(),
            "text": self.text.as_dict(),
            "joint_dim": self.joint_dim,
            "context_length": self.context_length,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ClapConfig:
        from dub.workflows.metrics.models.htsat import HTSATConfig
        from dub.workflows.metrics.models.roberta import RobertaConfig

        data = dict(data)
        return cls(
            audio=HTSATConfig.from_dict(data.pop("audio")), text=RobertaConfig.from_dict(data.pop("text")), **data
        )


def clap_htsat_base() -> ClapConfig:
    """The released model: HTSAT-base + RoBERTa-base, 512-d joint space (a function, so that
    importing this module does not import torch)."""
    from dub.workflows.metrics.models.htsat import HTSAT_BASE
    from dub.workflows.metrics.models.roberta import ROBERTA_BASE

    return ClapConfig(HTSAT_BASE, ROBERTA_BASE)


@dataclass(frozen=True)
class ClapPreprocess:
    """How a 48 kHz waveform becomes the model's 10 s input (see the module docstring)."""

    remove_mean: bool = True  # av-benchmark's loader subtracts the waveform mean
    max_seconds: float | None = 8.0  # av-benchmark's --audio_length; None: no cut
    quantize: bool = False  # int16 round trip (CLAP hook with numpy input); av-benchmark: off

    def as_dict(self) -> dict:
        return asdict(self)


def prepare_clap_audio(
    wav: np.ndarray,
    clip_samples: int = 480000,
    sample_rate: int = SAMPLE_RATE,
    preprocess: ClapPreprocess = ClapPreprocess(),
) -> np.ndarray:
    """One mono 48 kHz waveform -> exactly `clip_samples` float32 samples."""
    x = np.asarray(wav, dtype=np.float32).reshape(-1)
    if x.size == 0:
        raise ValueError("empty waveform: CLAP needs at least one sample")
    if not np.all(np.isfinite(x)):
        raise ValueError("waveform has NaN or infinite samples")
    if preprocess.remove_mean:
        x = x - x.mean(dtype=np.float64).astype(np.float32)
    if preprocess.max_seconds is not None:
        x = x[: int(sample_rate * preprocess.max_seconds)]
    if preprocess.quantize:
        x = (np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16).astype(np.float32) / np.float32(32767.0)
    if x.size > clip_samples:
        return np.ascontiguousarray(x[:clip_samples])
    repeated = np.tile(x, clip_samples // x.size)
    return np.pad(repeated, (0, clip_samples - repeated.size)).astype(np.float32)


# ------------------------------------------------------------------------------ model


def _projection(din: int, dout: int):
    from torch import nn

    return nn.Sequential(nn.Linear(din, dout), nn.ReLU(), nn.Linear(dout, dout))


def _training_mlp(dim: int):
    """CLAP's `*_transform` MLPLayers (Linear, ReLU, Dropout, Linear: keys `sequential.0`,
    `sequential.3`); only the contrastive training loss uses them."""
    from torch import nn

    module = nn.Module()
    module.sequential = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Identity(), nn.Linear(dim, dim))
    return module


@lru_cache(maxsize=1)
def _model_class():
    """`ClapModel`, defined on first use so importing this module does not import torch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from dub.workflows.metrics.models.htsat import HTSATEncoder
    from dub.workflows.metrics.models.roberta import RobertaModel

    class ClapModel(nn.Module):
        """LAION-CLAP (non-fusion) with the checkpoint's key names; outputs unit-norm embeddings."""

        def __init__(self, config: ClapConfig | None = None) -> None:
            super().__init__()
            config = config or clap_htsat_base()
            self.config = config
            self.audio_branch = HTSATEncoder(config.audio)
            self.text_branch = RobertaModel(config.text)
            self.audio_projection = _projection(config.audio.num_features, config.joint_dim)
            self.text_projection = _projection(config.text.hidden, config.joint_dim)
            self.audio_transform = _training_mlp(config.joint_dim)
            self.text_transform = _training_mlp(config.joint_dim)
            self.logit_scale_a = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
            self.logit_scale_t = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

        def encode_audio(self, wav: torch.Tensor) -> torch.Tensor:
            """(B, clip_samples) prepared 48 kHz audio -> (B, joint_dim), unit norm."""
            return F.normalize(self.audio_projection(self.audio_branch(wav)), dim=-1)

        def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            """(B, L) token ids and mask -> (B, joint_dim), unit norm."""
            _, pooled = self.text_branch(input_ids, attention_mask)
            return F.normalize(self.text_projection(pooled), dim=-1)

    ClapModel.__module__ = __name__
    return ClapModel


def __getattr__(name: str):
    if name == "ClapModel":
        return _model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def clap_state_dict(source) -> dict:
    """The model's state dict from a checkpoint path or mapping, as `CLAP_Module.load_ckpt`
    prepares it: unwrapped from `state_dict`, `module.` removed, `position_ids` dropped."""
    import torch

    from dub.model.weights.state_dicts import read_state_dict

    state = read_state_dict(
        source,
        wrappers=("state_dict",),
        strip=("module.",),
        suffixes=(".pt", ".pth", ".bin", ".ckpt"),
        what="LAION-CLAP checkpoint",
    )
    for key in _DROPPED_BUFFERS:
        value = state.pop(key, None)
        if value is None:
            continue
        flat = value.reshape(-1).long()
        expected = torch.arange(flat.numel()) if key.endswith("position_ids") else torch.zeros_like(flat)
        if not torch.equal(flat, expected):
            raise ValueError(
                f"{key} in the checkpoint is not the constant buffer transformers writes; "
                "is this a LAION-CLAP checkpoint?"
            )
    return state


def load_clap(
    path,
    device: str = "cpu",
    config: ClapConfig | None = None,
    vocab_path: str | Path | None = None,
    merges_path: str | Path | None = None,
    preprocess: ClapPreprocess = ClapPreprocess(),
) -> ClapScorer:
    """A ready `ClapScorer` from a LAION-CLAP checkpoint (`.pt`/`.pth` read with weights_only, or
    `.safetensors`) and RoBERTa's tokenizer files; the checkpoint must fit `config` exactly."""
    import torch

    from dub.model.weights.state_dicts import strict_load
    from dub.workflows.metrics.models.roberta import ByteLevelBPETokenizer

    config = config or clap_htsat_base()
    for name, file in (("vocab.json", vocab_path), ("merges.txt", merges_path)):
        if file is None or not Path(file).is_file():
            raise BackendUnavailable(
                f"missing RoBERTa tokenizer file {name}" + (f" (looked for {file})" if file is not None else "")
            )
    tokenizer = ByteLevelBPETokenizer(vocab_path, merges_path, max_length=config.context_length)
    with torch.device("meta"):
        model = _model_class()(config)
    strict_load(
        model,
        clap_state_dict(path),
        str(path),
        against="LAION-CLAP model",
        detail=f" (HTS-AT width {config.audio.embed_dim}, RoBERTa hidden {config.text.hidden})",
    )
    return ClapScorer(model.eval().to(device), tokenizer, device, preprocess)


class ClapScorer:
    """Text and audio embeddings of a loaded CLAP model, as numpy (N, joint_dim) float32 rows."""

    def __init__(
        self, model, tokenizer, device: str = "cpu", preprocess: ClapPreprocess = ClapPreprocess(), batch: int = 8
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.preprocess = preprocess
        self.batch = batch

    @property
    def dim(self) -> int:
        return self.model.config.joint_dim

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        rows = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch):
                ids, mask = self.tokenizer(list(texts[start : start + self.batch]))
                rows.append(self.model.encode_text(ids.to(self.device), mask.to(self.device)).float().cpu())
        return torch.cat(rows).numpy() if rows else np.zeros((0, self.dim), np.float32)

    def audio_embeddings(self, wavs_48k: Sequence[np.ndarray]) -> np.ndarray:
        """Mono 48 kHz waveforms (any length) -> one embedding per waveform."""
        import torch

        clip = self.model.config.audio.clip_samples
        rows = []
        with torch.inference_mode():
            for start in range(0, len(wavs_48k), self.batch):
                chunk = [
                    prepare_clap_audio(w, clip, SAMPLE_RATE, self.preprocess)
                    for w in wavs_48k[start : start + self.batch]
                ]
                x = torch.from_numpy(np.stack(chunk)).to(self.device)
                rows.append(self.model.encode_audio(x).float().cpu())
        return torch.cat(rows).numpy() if rows else np.zeros((0, self.dim), np.float32)

    def scores(self, texts: Sequence[str], wavs_48k: Sequence[np.ndarray]) -> np.ndarray:
        """Per-clip CLAP score of matching (text, audio) pairs."""
        if len(texts) != len(wavs_48k):
            raise ValueError(f"{len(texts)} texts for {len(wavs_48k)} waveforms")
        return clap_score(self.text_embeddings(texts), self.audio_embeddings(wavs_48k))


# ------------------------------------------------------------------------------ registry


def _tokenizer_file(locator: WeightsLocator, name: str) -> Path:
    """RoBERTa's tokenizer file `name` from the registry (model "roberta-base")."""
    from dub.model.weights.registry import MissingWeightsError

    try:
        return Path(locator.registry.path(ROBERTA_MODEL, name))
    except MissingWeightsError as exc:
        raise BackendUnavailable(str(exc)) from exc


def build_clap(
    locator: WeightsLocator,
    device: str = "cpu",
    config: ClapConfig | None = None,
    preprocess: ClapPreprocess = ClapPreprocess(),
) -> ClapScorer:
    """The CLAP scorer from the weights registry; BackendUnavailable names any missing file."""
    path = available_weights(locator, "laion_clap")
    vocab = _tokenizer_file(locator, "vocab.json")
    merges = _tokenizer_file(locator, "merges.txt")
    return load_clap(path, device, config, vocab, merges, preprocess)
