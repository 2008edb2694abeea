"""Writes the LAION-CLAP reference fixture of tests/test_clap.py, with the publisher's own code.

Produced with laion_clap 1.1.7 (PyPI), transformers 4.57.1, tokenizers 0.22.2, torchlibrosa 0.1.0,
librosa 0.11.0, torch 2.14.1 (CPU), numpy 2.4.6, in a separate virtualenv:

    python -m venv /tmp/ref_clap --system-site-packages
    /tmp/ref_clap/bin/pip install --no-deps laion_clap==1.1.7 torchlibrosa transformers==4.57.1 \
        "tokenizers>=0.22,<0.23" "huggingface_hub>=0.34,<1.0"
    /tmp/ref_clap/bin/pip install librosa wget h5py
    /tmp/ref_clap/bin/python tests/data/clap_fixture/make_fixture.py

Nothing is downloaded. `laion_clap` fetches `roberta-base` (weights and tokenizer) from the hub
when it builds a model, and `laion_clap.training.data` builds three hub tokenizers at import; so
before importing it this script replaces those `from_pretrained` calls: the RoBERTa tokenizer
is `RobertaTokenizer(vocab.json, merges.txt)` over the tiny vocabulary written here, the BERT
and BART tokenizers (unused by the hook) are None, and `RobertaModel.from_pretrained` builds a
random `RobertaModel(RobertaConfig(tiny sizes))`. `create_htsat_model` builds the publisher's
`HTSAT_Swin_Transformer` at a tiny width (embed 4) with HTSAT-base's front end and geometry.
CLAP hard-codes `text_projection` as Linear(768, joint); it is replaced by the same
Sequential(Linear(hidden, joint), ReLU, Linear(joint, joint)) at the tiny hidden width. Then the
hook's own `CLAP_Module.load_ckpt` loads a checkpoint written in the publisher's layout
(`{"state_dict": {"module.<key>": ...}}` with the old `position_ids` buffer), and
`get_audio_embedding_from_data` / `get_text_embedding` give the reference outputs.

Files written next to this script:
    vocab.json, merges.txt     tiny byte-level BPE vocabulary (trained here on a few captions)
    weights.safetensors        the tiny model's learned tensors under their CLAP names (no
                               "module." prefix); the constant buffers (STFT kernels, mel matrix,
                               relative_position_index, attn_mask) are left out to keep the
                               fixture small: the test fills them from our implementation, so
                               matching outputs also proves those constants
    reference.json             configs, texts, token ids, audio recipe + checksums, embeddings
    htsat_base_keys.json       key -> shape of the full-size CLAP (HTSAT-base + roberta-base), as
                               `CLAP_Module(enable_fusion=False, amodel="HTSAT-base")` holds it
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SEED = 1234
JOINT = 32
TINY_ROBERTA = dict(
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=80,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    hidden_dropout_prob=0.1,
    attention_probs_dropout_prob=0.1,
)
# roberta-base's published config.json
ROBERTA_BASE = dict(
    vocab_size=50265,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
)
TINY_HTSAT = dict(embed_dim=4, depths=[2, 2, 2, 2], num_heads=[1, 1, 2, 2], num_classes=5)
AUDIO_LENGTHS = (14400, 100000, 250000, 384000, 480000)
TEXTS = [
    "A dog barks twice, then rain falls on a tin roof.",
    "  leading spaces and  double spaces ",
    "unicode: café naïve 東京 🎵 — ok",
    "numbers 123 4567 and it's fine; we'll see. THE END!!",
    "<mask> a masked  <mask> token and </s> inside",
    "",
    "tabs\tand\nnew lines\r\n",
    "Quiet QQ question",  # 'Q' is left out of the tiny vocabulary: <unk>
    " ".join(f"word{i} birds chirp" for i in range(40)),  # longer than 75 tokens: truncated
]
CORPUS = (
    "a dog barks twice then rain falls on a tin roof birds chirp in the morning the engine hums "
    "water drips and a door slams footsteps on wooden floor wind blows through trees it's raining "
    "numbers 123 and 4567 spaces café"
)


def test_signal(length: int, index: int) -> np.ndarray:
    """Deterministic test audio (also written out in tests/test_clap.py as fixture_signal): a chirp with tremolo,
    a high tone and a slow square wave, different per clip; float64 maths, float32 result."""
    t = np.arange(length, dtype=np.float64) / 48000.0
    chirp = np.sin(2 * np.pi * (220.0 * (index + 1) * t + 150.0 * t * t)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3.0 * t))
    tone = 0.15 * np.sin(2 * np.pi * 5000.0 * t + index)
    square = 0.1 * np.sign(np.sin(2 * np.pi * (2.0 + index) * t))
    return (0.4 * chirp + tone + square + 0.02 * index).astype(np.float32)


# ------------------------------------------------------------------------------ tiny BPE


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tiny_bpe(n_merges: int = 80) -> None:
    import regex

    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    table = bytes_to_unicode()
    words = collections.Counter("".join(table[b] for b in w.encode()) for w in pat.findall(CORPUS))
    splits = {w: list(w) for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: collections.Counter = collections.Counter()
        for w, count in words.items():
            s = splits[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = max(sorted(pairs), key=lambda p: pairs[p])
        merges.append(best)
        for w in splits:
            s, out, i = splits[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and (s[i], s[i + 1]) == best:
                    out.append(s[i] + s[i + 1])
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            splits[w] = out
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for b in range(256):
        if chr(b) != "Q":
            vocab.setdefault(table[b], len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab["<mask>"] = len(vocab)
    (HERE / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (HERE / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


# ------------------------------------------------------------------------------ reference model


def patch_reference():
    """Import laion_clap with the hub calls replaced (see the module docstring)."""
    import transformers

    vocab_file, merges_file = str(HERE / "vocab.json"), str(HERE / "merges.txt")
    roberta_kind = {"config": TINY_ROBERTA}

    def roberta_tokenizer(cls, *args, **kwargs):
        return transformers.RobertaTokenizer(vocab_file, merges_file)

    def roberta_model(cls, *args, **kwargs):
        vocab_size = len(json.loads(Path(vocab_file).read_text(encoding="utf-8")))
        return transformers.RobertaModel(transformers.RobertaConfig(vocab_size=vocab_size, **roberta_kind["config"]))

    transformers.RobertaTokenizer.from_pretrained = classmethod(roberta_tokenizer)
    transformers.BertTokenizer.from_pretrained = classmethod(lambda cls, *a, **k: None)
    transformers.BartTokenizer.from_pretrained = classmethod(lambda cls, *a, **k: None)
    transformers.RobertaModel.from_pretrained = classmethod(roberta_model)

    import clap_module.model as clap_model
    import laion_clap  # noqa: F401 - puts clap_module on sys.path
    from clap_module.factory import _MODEL_CONFIGS
    from clap_module.htsat import HTSAT_Swin_Transformer

    htsat_kind = {"tiny": True}

    def create_htsat(audio_cfg, enable_fusion=False, fusion_type="None"):
        sizes = (
            TINY_HTSAT
            if htsat_kind["tiny"]
            else dict(embed_dim=128, depths=[2, 2, 12, 2], num_heads=[4, 8, 16, 32], num_classes=527)
        )
        return HTSAT_Swin_Transformer(
            spec_size=256,
            patch_size=4,
            patch_stride=(4, 4),
            window_size=8,
            config=audio_cfg,
            enable_fusion=enable_fusion,
            fusion_type=fusion_type,
            **sizes,
        )

    clap_model.create_htsat_model = create_htsat
    cfg = json.loads(json.dumps(_MODEL_CONFIGS["HTSAT-base"]))
    cfg["embed_dim"] = TINY_HTSAT["embed_dim"] * 8
    cfg["audio_cfg"]["class_num"] = TINY_HTSAT["num_classes"]
    cfg["joint_embed_shape"] = JOINT
    _MODEL_CONFIGS["HTSAT-fixture"] = cfg
    return laion_clap, roberta_kind, htsat_kind


def main() -> None:
    write_tiny_bpe()
    laion_clap, roberta_kind, htsat_kind = patch_reference()
    import transformers
    from torch import nn

    torch.manual_seed(SEED)
    module = laion_clap.CLAP_Module(enable_fusion=False, device="cpu", amodel="HTSAT-fixture")
    model = module.model
    model.text_projection = nn.Sequential(
        nn.Linear(TINY_ROBERTA["hidden_size"], JOINT), nn.ReLU(), nn.Linear(JOINT, JOINT)
    )
    # random everything (the constructors leave LayerNorm/BatchNorm at identity, biases at 0,
    # bias tables near 0): draw each learned tensor and bn0's statistics so that each one matters
    gen = torch.Generator().manual_seed(SEED)
    constant = ("spectrogram_extractor", "logmel_extractor", "relative_position_index", "attn_mask")
    state = model.state_dict()
    for key, value in state.items():
        if any(c in key for c in constant) or key.endswith("num_batches_tracked") or "position_ids" in key:
            continue
        if key.endswith("running_var"):
            value.copy_(0.5 + torch.rand(value.shape, generator=gen) * 10.0)
        elif key.endswith("running_mean"):
            value.copy_(-30.0 + torch.randn(value.shape, generator=gen) * 5.0)
        elif value.ndim >= 2:
            fan_in = int(np.prod(value.shape[1:]))
            value.copy_(torch.randn(value.shape, generator=gen) / np.sqrt(fan_in))
        else:
            centre = 1.0 if "norm" in key.lower() and key.endswith("weight") else 0.0
            value.copy_(torch.randn(value.shape, generator=gen) * 0.3 + centre)
    model.load_state_dict(state)

    # the publisher's layout: DDP prefix, wrapped in "state_dict", with the old persistent
    # position_ids buffer that load_ckpt removes
    ckpt_state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    positions = torch.arange(TINY_ROBERTA["max_position_embeddings"])[None]
    ckpt_state["module.text_branch.embeddings.position_ids"] = positions
    tmp = HERE / "_reference_ckpt.pt"
    torch.save({"epoch": 15, "name": "fixture", "state_dict": ckpt_state}, tmp)
    module.load_ckpt(str(tmp), verbose=False)
    tmp.unlink()
    module.eval()

    learned = {k: v.contiguous() for k, v in module.model.state_dict().items() if not any(c in k for c in constant)}
    from safetensors.torch import save_file

    save_file(learned, str(HERE / "weights.safetensors"))

    waves = [test_signal(n, i) for i, n in enumerate(AUDIO_LENGTHS)]
    with torch.no_grad():
        audio_tensor = module.get_audio_embedding_from_data([torch.from_numpy(w) for w in waves], use_tensor=True)
        audio_numpy = module.get_audio_embedding_from_data(waves, use_tensor=False)
        text = module.get_text_embedding(TEXTS, use_tensor=True)
        # the parts, for locating a mismatch: log mel of clip 0 (before bn0), audio branch embedding
        branch = model.audio_branch
        x = torch.from_numpy(
            np.pad(np.tile(waves[0], 480000 // len(waves[0])), (0, 480000 - 480000 // len(waves[0]) * len(waves[0])))
        )[None]
        log_mel = branch.logmel_extractor(branch.spectrogram_extractor(x))
        branch_embedding = branch({"waveform": x}, device="cpu")["embedding"]
        pooled = model.text_branch(**{k: v for k, v in module.tokenizer(TEXTS[:2]).items()})["pooler_output"]
    tokens = module.tokenizer(TEXTS)

    reference = {
        "produced_by": {
            "laion_clap": "1.1.7",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "script": "tests/data/clap_fixture/make_fixture.py",
        },
        "config": {
            "htsat": TINY_HTSAT,
            "roberta": {
                k: TINY_ROBERTA[k]
                for k in (
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "intermediate_size",
                    "max_position_embeddings",
                    "type_vocab_size",
                    "layer_norm_eps",
                    "pad_token_id",
                )
            },
            "vocab_size": len(json.loads((HERE / "vocab.json").read_text(encoding="utf-8"))),
            "joint_dim": JOINT,
        },
        "texts": TEXTS,
        "input_ids": tokens["input_ids"].tolist(),
        "attention_mask": tokens["attention_mask"].tolist(),
        "tokens": [module.tokenize.tokenize(t) for t in TEXTS],
        "audio": {
            "lengths": list(AUDIO_LENGTHS),
            "sums": [float(np.sum(w, dtype=np.float64)) for w in waves],
            "abs_sums": [float(np.sum(np.abs(w), dtype=np.float64)) for w in waves],
            "first": [w[:4].tolist() for w in waves],
        },
        "audio_embedding": audio_tensor.tolist(),  # use_tensor=True: no quantisation (av-benchmark)
        "audio_embedding_quantized": np.asarray(audio_numpy).tolist(),  # numpy input: int16 round trip
        "text_embedding": text.tolist(),
        "clip0_log_mel_rows": log_mel[0, 0, ::50].tolist(),  # every 50th frame, before bn0
        "clip0_branch_embedding": branch_embedding[0].tolist(),
        "pooled_first_two": pooled.tolist(),
    }
    (HERE / "reference.json").write_text(json.dumps(reference), encoding="utf-8")

    # full-size key/shape listing, as the hook builds it (random weights, never saved)
    roberta_kind["config"] = {k: v for k, v in ROBERTA_BASE.items() if k != "vocab_size"}
    htsat_kind["tiny"] = False
    transformers.RobertaModel.from_pretrained = classmethod(
        lambda cls, *a, **k: cls(transformers.RobertaConfig(**ROBERTA_BASE))
    )
    full = laion_clap.CLAP_Module(enable_fusion=False, device="cpu", amodel="HTSAT-base")
    listing = {k: list(v.shape) for k, v in full.model.state_dict().items()}
    (HERE / "htsat_base_keys.json").write_text(json.dumps(listing, indent=0), encoding="utf-8")
    print(f"wrote fixture: {len(learned)} tensors, {len(listing)} full-size keys", file=sys.stderr)


if __name__ == "__main__":
    main()
