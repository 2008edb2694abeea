"""The local weights registry: which weights files dub knows, where each one lives, where a
user downloads it, and whether the copy on disk is intact.

Nothing downloads. One directory holds everything, resolved from an explicit argument, else
the environment variable `DUB_WEIGHTS_DIR`, else `~/.cache/dub/weights`; a known file lives at
`<root>/<model>/<file>`. `import_file` copies a download into place, converting PyTorch pickles
(.pth/.pt/.bin/.ckpt) to `<stem>.safetensors` through `torch.load(weights_only=True)`, so the
runtime never unpickles anything. The original name is also accepted where a user dropped the
download in place by hand.

Checksums: the publisher's md5 / sha256 where one is published (MMAudio lists md5 sums in
`mmaudio/utils/download_utils.py`; Hugging Face shows the sha256 of LFS files; torch.hub file
names end in a sha256 prefix). A converted file carries the source's digests and a digest of
its own tensors in its safetensors metadata, so it can be re-verified without the original.
A verification result is cached beside the file (`<name>.dub-verify.json`, keyed by size and
mtime) so `list` and loaders need not re-hash gigabytes; it is only a cache, safe to delete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dub.errors import short_error
from dub.model.weights.state_dicts import (  # noqa: F401 - errors and readers re-exported for callers
    WRAPPER_KEYS,
    CheckpointLayout,
    MissingWeightsError,
    UnsafeCheckpointError,
    WeightsError,
    read_checkpoint,
    read_state_dict,
    safetensors_metadata,
    unwrap_state_dict,
)
from dub.storage.atomic import atomic_path, write_json_atomic

ENV_VAR = "DUB_WEIGHTS_DIR"
DEFAULT_ROOT = "~/.cache/dub/weights"
CONVERTIBLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_CHUNK = 4 << 20
_CACHE_SUFFIX = ".dub-verify.json"
_META_PREFIX = "dub."

# Verification outcomes.
OK = "ok"
MISMATCH = "mismatch"
MISSING = "missing"
UNVERIFIABLE = "unverifiable"  # present, but the publisher gives no checksum
UNCHECKED = "unchecked"  # present, not verified yet (list only)


class WeightsVerificationError(WeightsError):
    pass


class UnknownWeightsError(WeightsError, ValueError):
    pass


# -- the table of known files --------------------------------------------------------------


@dataclass(frozen=True)
class KnownFile:
    """One published weights file. `size`, `md5`, `sha256`, `sha256_prefix` hold only what the
    publisher states; several sha256 values mean the publisher replaced the file over time."""

    model: str
    file: str
    url: str
    description: str = ""
    size: int | None = None  # exact bytes
    size_hint: str = ""  # as published, e.g. "601M"
    md5: str | None = None
    sha256: tuple[str, ...] = ()
    sha256_prefix: str | None = None
    note: str = ""

    @property
    def relpath(self) -> str:
        return f"{self.model}/{self.file}"

    @property
    def converts(self) -> bool:
        """Imported as safetensors carrying dub's digests (pickles converted, safetensors re-saved)."""
        return Path(self.file).suffix in (*CONVERTIBLE_SUFFIXES, ".safetensors")

    @property
    def stored_relpath(self) -> str:
        """Where `import_file` puts it: pickles become safetensors."""
        return f"{self.model}/{Path(self.file).stem}.safetensors" if self.converts else self.relpath

    @property
    def has_checksum(self) -> bool:
        return bool(self.md5 or self.sha256 or self.sha256_prefix)

    def check(self, digests: Digests) -> tuple[str, str]:
        """(status, detail) of a file with these digests against what the publisher states."""
        if self.size is not None and digests.size != self.size:
            return MISMATCH, f"size {digests.size} bytes, published {self.size}"
        if self.md5:
            if digests.md5 != self.md5:
                return MISMATCH, f"md5 {digests.md5}, published {self.md5}"
            return OK, "md5 matches the publisher's"
        if self.sha256:
            if digests.sha256 not in self.sha256:
                return MISMATCH, f"sha256 {digests.sha256}, published {' or '.join(self.sha256)}"
            return OK, "sha256 matches the publisher's"
        if self.sha256_prefix:
            if not digests.sha256.startswith(self.sha256_prefix):
                return (
                    MISMATCH,
                    f"sha256 {digests.sha256} does not start with the published prefix {self.sha256_prefix}",
                )
            return OK, f"sha256 starts with the published prefix {self.sha256_prefix}"
        return UNVERIFIABLE, "the publisher gives no checksum"


_MMAUDIO_HF = "https://huggingface.co/hkchengrex/MMAudio/resolve/main/weights/"
_MMAUDIO_RELEASE = "https://github.com/hkchengrex/MMAudio/releases/download/v0.1/"
_MMAUDIO_MD5 = "md5 from MMAudio mmaudio/utils/download_utils.py; size as in its docs/MODELS.md"
_BIGVGAN_V2 = "https://huggingface.co/nvidia/bigvgan_v2_44khz_128band_512x/resolve/main/"
_DFN5B = "https://huggingface.co/apple/DFN5B-CLIP-ViT-H-14-384/resolve/main/"
_HF_NOT_RECORDED = (
    "Hugging Face shows this file's sha256 on its page; it was not reachable when this "
    "table was written, so none is recorded"
)

KNOWN_FILES: tuple[KnownFile, ...] = (
    # MMAudio flow networks (the multi-step baseline and the MF-MJT starting point)
    KnownFile(
        "mmaudio",
        "mmaudio_small_16k.pth",
        _MMAUDIO_HF + "mmaudio_small_16k.pth",
        "MMAudio network, small, 16 kHz",
        size_hint="601M",
        md5="af93cde404179f58e3919ac085b8033b",
        note=_MMAUDIO_MD5,
    ),
    KnownFile(
        "mmaudio",
        "mmaudio_small_44k.pth",
        _MMAUDIO_HF + "mmaudio_small_44k.pth",
        "MMAudio network, small, 44.1 kHz",
        size_hint="601M",
        md5="babd74c884783d13701ea2820a5f5b6d",
        note=_MMAUDIO_MD5,
    ),
    KnownFile(
        "mmaudio",
        "mmaudio_medium_44k.pth",
        _MMAUDIO_HF + "mmaudio_medium_44k.pth",
        "MMAudio network, medium, 44.1 kHz",
        size_hint="2.4G",
        md5="5a56b6665e45a1e65ada534defa903d0",
        note=_MMAUDIO_MD5,
    ),
    KnownFile(
        "mmaudio",
        "mmaudio_large_44k.pth",
        _MMAUDIO_HF + "mmaudio_large_44k.pth",
        "MMAudio network, large, 44.1 kHz",
        size_hint="3.9G",
        md5="fed96c325a6785b85ce75ae1aafd2673",
        note=_MMAUDIO_MD5,
    ),
    KnownFile(
        "mmaudio",
        "mmaudio_large_44k_v2.pth",
        _MMAUDIO_HF + "mmaudio_large_44k_v2.pth",
        "MMAudio network, large, 44.1 kHz, v2",
        size_hint="3.9G",
        md5="01ad4464f049b2d7efdaa4c1a59b8dfe",
        note=_MMAUDIO_MD5,
    ),
    # MMAudio's external weights (its ext_weights/ folder)
    KnownFile(
        "mmaudio-ext",
        "v1-16.pth",
        _MMAUDIO_RELEASE + "v1-16.pth",
        "MMAudio VAE, 16 kHz (80 mel -> 20 latent channels)",
        size_hint="655M",
        md5="69f56803f59a549a1a507c93859fd4d7",
        note=_MMAUDIO_MD5,
    ),
    KnownFile(
        "mmaudio-ext",
        "v1-44.pth",
        _MMAUDIO_RELEASE + "v1-44.pth",
        "MMAudio VAE, 44.1 kHz (128 mel -> 40 latent channels)",
        size_hint="1.2G",
        md5="fab020275fa44c6589820ce025191600",
        note=_MMAUDIO_MD5,
    ),
    KnownFile(
        "mmaudio-ext",
        "best_netG.pt",
        _MMAUDIO_RELEASE + "best_netG.pt",
        "BigVGAN vocoder, 16 kHz (from Make-An-Audio 2)",
        size_hint="429M",
        md5="eeaf372a38a9c31c362120aba2dde292",
        note=_MMAUDIO_MD5,
    ),
    KnownFile(
        "mmaudio-ext",
        "synchformer_state_dict.pth",
        _MMAUDIO_RELEASE + "synchformer_state_dict.pth",
        "Synchformer (its visual branch gives the sync features; the whole model scores DeSync)",
        size_hint="907M",
        md5="5b2f5594b0730f70e41e549b7c94390c",
        note=_MMAUDIO_MD5,
    ),
    # BigVGAN-v2 44.1 kHz vocoder, the one MMAudio's 44k models decode with
    KnownFile(
        "bigvgan-v2-44k",
        "bigvgan_generator.pt",
        _BIGVGAN_V2 + "bigvgan_generator.pt",
        "BigVGAN-v2 generator, 44.1 kHz, 128 bands, 512x",
        size_hint="489 MB",
        sha256=(
            "d9fe7ec6bd0b44ed9d66973d5012d8181c1570b01e5c72df51973e241dccd357",
            "b42626076b2d905942150f55015455d0fc963e58794b6532b90b3e4bba34bc97",
        ),
        note="LFS sha256 from Hugging Face: the current main (v2.4) file, and the July 2024 upload "
        "(now also published as bigvgan_generator_3msteps.pt)",
    ),
    KnownFile(
        "bigvgan-v2-44k",
        "config.json",
        _BIGVGAN_V2 + "config.json",
        "BigVGAN-v2 44.1 kHz hyper-parameters",
        note="small git file: no checksum published",
    ),
    # CLIP image/text encoder MMAudio uses (open_clip, hf-hub:apple/DFN5B-CLIP-ViT-H-14-384)
    KnownFile(
        "clip-dfn5b-h14-384",
        "open_clip_pytorch_model.bin",
        _DFN5B + "open_clip_pytorch_model.bin",
        "DFN5B CLIP ViT-H/14 at 384 px, open_clip weights",
        note=_HF_NOT_RECORDED,
    ),
    KnownFile(
        "clip-dfn5b-h14-384",
        "open_clip_config.json",
        _DFN5B + "open_clip_config.json",
        "open_clip model config for the DFN5B weights",
        note="small git file: no checksum published",
    ),
    # evaluation models (FAD / KL / IS / CLAP score)
    KnownFile(
        "panns",
        "Cnn14_16k_mAP=0.438.pth",
        "https://zenodo.org/record/3987831/files/Cnn14_16k_mAP%3D0.438.pth",
        "PANNs CNN14, 16 kHz (AudioSet tagging; FD/KL/IS)",
        note="Zenodo lists an md5 on the record page; it was not reachable when this table was "
        "written, so none is recorded",
    ),
    KnownFile(
        "vggish",
        "vggish-10086976.pth",
        "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish-10086976.pth",
        "VGGish (torchvggish port; FAD)",
        sha256_prefix="10086976",
        note="torch.hub convention: the name ends in the first 8 hex digits of the file's sha256",
    ),
    KnownFile(
        "vggish",
        "vggish_pca_params-970ea276.pth",
        "https://github.com/harritaylor/torchvggish/releases/download/v0.1/vggish_pca_params-970ea276.pth",
        "VGGish PCA post-processing parameters",
        sha256_prefix="970ea276",
        note="torch.hub convention: the name ends in the first 8 hex digits of the file's sha256",
    ),
    KnownFile(
        "passt",
        "passt-s-f128-p16-s10-ap.476-swa.pt",
        "https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/passt-s-f128-p16-s10-ap.476-swa.pt",
        "PaSST-S (AudioSet; FD/KL)",
        note="no checksum published",
    ),
    KnownFile(
        "laion-clap",
        "music_speech_audioset_epoch_15_esc_89.98.pt",
        "https://huggingface.co/lukewys/laion_clap/resolve/main/music_speech_audioset_epoch_15_esc_89.98.pt",
        "LAION-CLAP HTSAT-base, music+speech+AudioSet (CLAP score, as av-benchmark uses it)",
        note=_HF_NOT_RECORDED,
    ),
    KnownFile(
        "imagebind",
        "imagebind_huge.pth",
        "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth",
        "ImageBind huge (IB-score: its vision and audio towers, as av-benchmark uses it)",
        note="facebookresearch publishes no checksum",
    ),
    KnownFile(
        "roberta-base",
        "vocab.json",
        "https://huggingface.co/FacebookAI/roberta-base/resolve/main/vocab.json",
        "RoBERTa-base BPE vocabulary (LAION-CLAP's text tokenizer)",
        note=_HF_NOT_RECORDED,
    ),
    KnownFile(
        "roberta-base",
        "merges.txt",
        "https://huggingface.co/FacebookAI/roberta-base/resolve/main/merges.txt",
        "RoBERTa-base BPE merges (LAION-CLAP's text tokenizer)",
        note=_HF_NOT_RECORDED,
    ),
    # the user's own MF-MJT checkpoint
    KnownFile(
        "mf-mjt",
        "mf_mjt_small_16k.safetensors",
        "",
        "your MF-MJT small 16 kHz checkpoint (one-step)",
        note="it is the output of `dub train`",
    ),
)


# -- digests -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Digests:
    size: int
    md5: str
    sha256: str


def file_digests(path: str | Path) -> Digests:
    """Size, md5 and sha256 of a file in one streaming pass."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return Digests(size, md5.hexdigest(), sha.hexdigest())


def tensor_digest(tensors: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of each tensor in name order: identifies the
    content of a state dict independently of the file layout it is stored in."""
    import torch

    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    sha = hashlib.sha256()
    for name, tensor in sorted(items, key=lambda kv: kv[0]):
        t = tensor.detach().to("cpu").contiguous()
        sha.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        sha.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return sha.hexdigest()


def _safetensors_tensor_digest(path: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return tensor_digest((k, f.get_tensor(k)) for k in f.keys())


# -- safe reading of checkpoints (model/weights/state_dicts.py) -----------------------------------


def unwrap_checkpoint(obj: Any) -> tuple[dict[str, Any], CheckpointLayout]:
    """A flat {name: tensor} state dict from a loaded checkpoint: walks through WRAPPER_KEYS,
    keeps JSON-able scalars beside the wrapper as extras (epoch, iteration), drops the rest
    (optimizer states), flattens nested dicts with dotted names; numpy arrays become tensors."""
    return unwrap_state_dict(obj, wrappers=WRAPPER_KEYS, flatten=True)


def load_state_dict(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """A flat state dict from a .safetensors file, or from a PyTorch checkpoint (.pth, .pt, .bin,
    .ckpt) loaded with weights_only=True and unwrapped (`unwrap_checkpoint`). Never runs code
    from the file. It accepts every published file (e.g. {"generator": ...} vocoders, numpy
    arrays in PANNs, open_clip's .bin); model loaders read their own files more strictly."""
    return read_state_dict(path, wrappers=WRAPPER_KEYS, flatten=True, device=device)


# -- the registry --------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsRow:
    model: str
    file: str
    present: bool
    path: str  # where it is, or where it goes
    size: int | None  # bytes on disk
    published_size: str
    verified: str  # OK | MISMATCH | UNVERIFIABLE | UNCHECKED | MISSING
    url: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerifyResult:
    model: str
    file: str
    path: str
    status: str  # OK | MISMATCH | MISSING | UNVERIFIABLE
    detail: str

    @property
    def failed(self) -> bool:
        return self.status == MISMATCH

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_root(root: str | Path | None = None) -> Path:
    """The weights directory: `root`, else $DUB_WEIGHTS_DIR, else ~/.cache/dub/weights."""
    chosen = root if root is not None else os.environ.get(ENV_VAR) or DEFAULT_ROOT
    return Path(chosen).expanduser().resolve()


class WeightsRegistry:
    """Known weights files under one local directory (see the module docstring)."""

    def __init__(self, root: str | Path | None = None, known: Iterable[KnownFile] = KNOWN_FILES) -> None:
        self.root = resolve_root(root)
        self.known: tuple[KnownFile, ...] = tuple(known)
        self._by_key = {(k.model, k.file): k for k in self.known}
        if len(self._by_key) != len(self.known):
            raise ValueError("duplicate (model, file) in the known-files table")

    # -- lookup ----------------------------------------------------------------------------

    def models(self) -> list[str]:
        return sorted({k.model for k in self.known})

    def known_file(self, model: str, file: str) -> KnownFile:
        try:
            return self._by_key[(model, file)]
        except KeyError:
            files = [k.file for k in self.known if k.model == model]
            hint = f"known files of {model!r}: {files}" if files else f"known models: {self.models()}"
            raise UnknownWeightsError(f"unknown weights file {model!r}/{file!r}; {hint}") from None

    def find_by_filename(self, name: str) -> KnownFile | None:
        """The known file a download is, from its file name (published or stored form)."""
        matches = [k for k in self.known if name in (k.file, Path(k.stored_relpath).name)]
        return matches[0] if len(matches) == 1 else None

    def expected_path(self, model: str, file: str) -> Path:
        """Where `import_file` puts the file."""
        return self.root / self.known_file(model, file).stored_relpath

    def locate(self, model: str, file: str) -> Path | None:
        """The present copy: the imported form first, else the download dropped in by hand."""
        known = self.known_file(model, file)
        for rel in dict.fromkeys((known.stored_relpath, known.relpath)):
            candidate = self.root / rel
            if candidate.is_file():
                return candidate
        return None

    def path(self, model: str, file: str, *, verify: bool = False) -> Path:
        """The local path of a known file. Raises MissingWeightsError (naming the file, where it
        goes and where it comes from) if absent; with `verify`, WeightsVerificationError if it
        does not match its checksum (a cached result is reused while the file is unchanged)."""
        known = self.known_file(model, file)
        found = self.locate(model, file)
        if found is None:
            raise MissingWeightsError(self._missing_message(known))
        if verify:
            result = self.verify_file(model, file, use_cache=True)
            if result.failed:
                raise WeightsVerificationError(
                    f"{found} failed verification: {result.detail}. Download {known.file} again"
                    + (f" from {known.url}" if known.url else "")
                    + " and re-import it with "
                    f"`dub weights import FILE --dir {self.root}`."
                )
        return found

    def _missing_message(self, known: KnownFile) -> str:
        where = self.root / known.stored_relpath
        also = f" (or the download as is: {self.root / known.relpath})" if known.relpath != known.stored_relpath else ""
        command = f"`dub weights import PATH/{known.file} --dir {self.root}`"
        source = (
            f"Download it from {known.url}, then run {command}"
            if known.url
            else f"It is not published ({known.note}); put it in place with {command}"
        )
        return (
            f"missing weights file {known.file} ({known.description or known.model}). It goes at {where}{also}. "
            f"{source} (or set {ENV_VAR} to the directory that holds your weights)."
        )

    # -- listing and verification ----------------------------------------------------------

    def list(self) -> list[WeightsRow]:
        """One row per known file; `verified` comes from the cache (no hashing here)."""
        rows = []
        for known in self.known:
            found = self.locate(known.model, known.file)
            if found is None:
                rows.append(
                    WeightsRow(
                        known.model,
                        known.file,
                        False,
                        str(self.root / known.stored_relpath),
                        None,
                        known.size_hint,
                        MISSING,
                        known.url,
                    )
                )
                continue
            cached = _read_cache(found)
            rows.append(
                WeightsRow(
                    known.model,
                    known.file,
                    True,
                    str(found),
                    found.stat().st_size,
                    known.size_hint,
                    cached.status if cached else UNCHECKED,
                    known.url,
                )
            )
        return rows

    def verify(self, model: str | None = None, *, use_cache: bool = False) -> list[VerifyResult]:
        """Verify every known file (of `model`, if given); streams each file once."""
        if model is not None and model not in self.models():
            raise UnknownWeightsError(f"unknown model {model!r}; known models: {self.models()}")
        return [
            self.verify_file(k.model, k.file, use_cache=use_cache)
            for k in self.known
            if model is None or k.model == model
        ]

    def verify_file(self, model: str, file: str, *, use_cache: bool = False) -> VerifyResult:
        known = self.known_file(model, file)
        found = self.locate(model, file)
        if found is None:
            return VerifyResult(
                model, file, str(self.root / known.stored_relpath), MISSING, self._missing_message(known)
            )
        if use_cache and (cached := _read_cache(found)) is not None:
            return VerifyResult(model, file, str(found), cached.status, cached.detail + " (cached)")
        status, detail, sha256 = self._check(known, found)
        _write_cache(found, status, detail, sha256=sha256)
        return VerifyResult(model, file, str(found), status, detail)

    def _check(self, known: KnownFile, found: Path) -> tuple[str, str, str]:
        """(status, detail, sha256 of the file when it was hashed, else "")."""
        meta = _dub_metadata(found) if found.suffix == ".safetensors" else None
        if meta is None:  # the file as published
            digests = file_digests(found)
            if found.suffix == ".safetensors" and not _safetensors_readable(found):
                return MISMATCH, "not a readable safetensors file", digests.sha256
            return (*known.check(digests), digests.sha256)
        status, detail = self._check_imported(known, found, meta)
        return status, detail, ""

    def _check_imported(self, known: KnownFile, found: Path, meta: dict[str, str]) -> tuple[str, str]:
        if meta.get("error"):
            return MISMATCH, meta["error"]
        try:
            actual = _safetensors_tensor_digest(found)
        except Exception as err:  # noqa: BLE001 - any read failure means a damaged file
            return MISMATCH, f"tensors unreadable ({short_error(err)})"
        if actual != meta.get("tensor_sha256"):
            return MISMATCH, "tensors changed since import (the file is damaged)"
        source = Digests(int(meta.get("source_size", -1)), meta.get("source_md5", ""), meta.get("source_sha256", ""))
        status, detail = known.check(source)
        if status == MISMATCH:
            return MISMATCH, f"imported from a file that does not match the publisher's checksum: {detail}"
        if status == UNVERIFIABLE:
            return OK, "intact since import; the publisher gives no checksum for the original"
        return OK, f"intact since import; the original's {detail}"

    def digest(self, model: str, file: str) -> str:
        """sha256 of the present file (cached while the file is unchanged): identifies weights
        in run configs without re-hashing gigabytes on every run."""
        found = self.path(model, file)
        cached = _read_cache(found)
        if cached is not None and cached.sha256:
            return cached.sha256
        sha = file_digests(found).sha256
        _write_cache(found, cached.status if cached else UNCHECKED, cached.detail if cached else "", sha256=sha)
        return sha

    # -- import ----------------------------------------------------------------------------

    def import_file(self, src: str | Path, model: str | None = None, file: str | None = None) -> Path:
        """Copy a download into place, converting pickles to safetensors, and verify it.

        `model`/`file` default to the known file whose published name is `src`'s name. A source
        that fails the publisher's checksum, or whose unpickling would run code, is refused and
        nothing is written."""
        src = Path(src).expanduser()
        if not src.is_file():
            raise MissingWeightsError(f"nothing to import: {src} is not a file")
        known = self.identify(src, model, file)
        source = file_digests(src)
        status, detail = known.check(source)
        if status == MISMATCH:
            raise WeightsVerificationError(
                f"refusing to import {src} as {known.relpath}: {detail}. The download is damaged or a "
                f"different file" + (f"; download it again from {known.url}" if known.url else "") + "."
            )
        dest = self.root / known.stored_relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        if known.converts:
            _convert_to_safetensors(src, dest, source)
        else:
            _atomic_copy(src, dest)
        result = self.verify_file(known.model, known.file)
        if result.failed:  # cannot happen unless the disk lies; never leave a bad file looking imported
            dest.unlink(missing_ok=True)
            raise WeightsVerificationError(f"{dest} failed verification right after import: {result.detail}")
        return dest

    def identify(self, src: str | Path, model: str | None = None, file: str | None = None) -> KnownFile:
        """The known file a download is: given by model and file, told by its file name, or the
        only file of the given model (e.g. your checkpoint saved under another name)."""
        src = Path(src)
        if model is not None and file is not None:
            return self.known_file(model, file)
        pool = [k for k in self.known if (model is None or k.model == model) and (file is None or k.file == file)]
        by_name = [k for k in pool if src.name in (k.file, Path(k.stored_relpath).name)]
        if len(by_name) == 1:
            return by_name[0]
        if (model is not None or file is not None) and len(pool) == 1:
            return pool[0]
        raise UnknownWeightsError(
            f"cannot tell which known weights file {src.name} is; give the model and file "
            f"(e.g. --model mmaudio --file mmaudio_small_16k.pth). Known: " + ", ".join(k.relpath for k in self.known)
        )


# -- conversion and file helpers -----------------------------------------------------------


def _convert_to_safetensors(src: Path, dest: Path, source: Digests) -> None:
    from safetensors.torch import save_file

    kept: dict[str, str] = {}
    if src.suffix == ".safetensors":  # re-saved only to record the digests; its own metadata is kept
        state, layout = load_state_dict(src), CheckpointLayout()
        kept = {k: v for k, v in safetensors_metadata(src).items() if not k.startswith(_META_PREFIX + "source")}
    else:
        state, layout = unwrap_checkpoint(read_checkpoint(src))
    tensors = _detach_for_saving(state)
    metadata = kept | {
        _META_PREFIX + "format": "1",
        _META_PREFIX + "source_name": src.name,
        _META_PREFIX + "source_size": str(source.size),
        _META_PREFIX + "source_md5": source.md5,
        _META_PREFIX + "source_sha256": source.sha256,
        _META_PREFIX + "nesting": json.dumps(list(layout.nesting)),
        _META_PREFIX + "dropped": json.dumps(list(layout.dropped)),
        _META_PREFIX + "extras": json.dumps(layout.extras, sort_keys=True),
        _META_PREFIX + "tensor_sha256": tensor_digest(tensors),
    }
    with atomic_path(dest) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _detach_for_saving(state: Mapping[str, Any]) -> dict[str, Any]:
    """safetensors refuses tensors that share memory or are not contiguous: copy only those."""
    import torch

    out = {}
    seen: set[int] = set()
    for name, tensor in state.items():
        t = tensor.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if not t.is_contiguous() or (ptr is not None and ptr in seen):
            t = t.clone(memory_format=torch.contiguous_format)
        elif ptr is not None:
            seen.add(ptr)
        out[name] = t
    return out


def _dub_metadata(path: Path) -> dict[str, str] | None:
    """The dub.* metadata of a safetensors file made by `import_file`; None if it has none;
    {"error": ...} if the header cannot be read."""
    try:
        meta = safetensors_metadata(path)
    except Exception as err:  # noqa: BLE001 - a damaged header
        return {"error": f"safetensors header unreadable ({short_error(err)})"}
    if _META_PREFIX + "tensor_sha256" not in meta:
        return None
    return {k[len(_META_PREFIX) :]: v for k, v in meta.items() if k.startswith(_META_PREFIX)}


def _safetensors_readable(path: Path) -> bool:
    try:
        safetensors_metadata(path)
        return True
    except Exception:  # noqa: BLE001
        return False


def _atomic_copy(src: Path, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


@dataclass(frozen=True)
class _Cached:
    status: str
    detail: str
    sha256: str


def _cache_path(path: Path) -> Path:
    return path.with_name(path.name + _CACHE_SUFFIX)


def _read_cache(path: Path) -> _Cached | None:
    try:
        data = json.loads(_cache_path(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return None
    if data.get("size") != stat.st_size or data.get("mtime_ns") != stat.st_mtime_ns:
        return None  # the file changed since: the cached result says nothing about it
    if data.get("status") == UNCHECKED and not data.get("sha256"):
        return None
    return _Cached(data.get("status", UNCHECKED), data.get("detail", ""), data.get("sha256", ""))


def mark_unverifiable(path: str | Path, detail: str) -> None:
    """Record in the verification cache that a file present under a registry name can have no
    publisher checksum (say, random weights written for timing), so loading it is not refused as
    a mismatch; `dub weights verify` re-hashes it and reports what it really is."""
    path = Path(path)
    _write_cache(path, UNVERIFIABLE, detail, sha256=file_digests(path).sha256)


def _write_cache(path: Path, status: str, detail: str, sha256: str = "") -> None:
    try:
        stat = path.stat()
        previous = _read_cache(path)
        record = {
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "status": status,
            "detail": detail,
            "sha256": sha256 or (previous.sha256 if previous else ""),
        }
        # a cache: losing it to a power cut costs a re-hash, not worth an fsync
        write_json_atomic(_cache_path(path), record, durable=False, indent=1)
    except OSError:
        pass  # a read-only weights directory: verification still works, just uncached
