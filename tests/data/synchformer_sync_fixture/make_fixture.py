"""Generate the full-Synchformer (DeSync) reference fixture with av-benchmark's own code.

Not run by the tests; run by hand in a SEPARATE environment that can import av-benchmark's
`av_bench/synchformer/*.py` (it needs transformers, einops, omegaconf, timm besides torch):

    python -m venv /tmp/ref_synchformer --system-site-packages
    /tmp/ref_synchformer/bin/pip install --no-deps transformers==4.46.3 huggingface_hub==0.26.5 \
        tokenizers==0.20.3 einops omegaconf
    mkdir -p /tmp/avb && git -C <av-benchmark mirror> archive HEAD av_bench/__init__.py av_bench/synchformer \
        av_bench/extract.py av_bench/data/audio_dataset.py extract_video.py | tar -x -C /tmp/avb
    /tmp/ref_synchformer/bin/python tests/data/synchformer_sync_fixture/make_fixture.py --avb /tmp/avb

Produced with av-benchmark (hkchengrex/av-benchmark) commit 050a5cdb9bbd1a6f8cbb9fdde076992a695e2501,
transformers 4.46.3, torch 2.14.1, torchaudio 2.11.0 (versions are also written to config.json).

What it does: builds av-benchmark's `Synchformer` (visual MotionFormer + audio AST + sync
transformer head) made TINY by patching its hard-coded sizes (the yaml config, HF ASTConfig,
the 2-D PatchEmbed's img_size=224, and the head's 768-wide layers), overwrites every parameter
with seeded random values (the reference zero-initialises many), and runs the reference code:

- `encode_audio_with_sync` (taken verbatim from av_bench/extract.py, executed from its source
  because that module imports ImageBind at top level) with torchaudio's MelSpectrogram built as
  in av_bench/extraction_models.py: wav -> mel input of the AST -> audio features;
- `encode_video_with_sync` (verbatim from extract_video.py, its `h == 224` assertion set to the
  tiny crop): frames -> visual features;
- `compare_v_a` on 24-segment features cut as av_bench/evaluate.py does (first and last 14).

Outputs (next to this script): weights.safetensors (the whole state dict, publisher's key
names), io.safetensors (inputs and outputs), config.json (sizes, versions).
"""

from __future__ import annotations

import argparse
import ast as pyast
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

D = 16  # every width of the tiny model
CROP = 32  # video crop (2 x 2 patches of 16)
SEED = 1234


def function_source(path: Path, name: str) -> str:
    tree = pyast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, pyast.FunctionDef) and node.name == name:
            return pyast.get_source_segment(path.read_text(), node)
    raise KeyError(f"{name} not in {path}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--avb", type=Path, required=True, help="checkout root holding av_bench/")
    parser.add_argument("--mirror-commit", default="050a5cdb9bbd1a6f8cbb9fdde076992a695e2501")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    sys.path.insert(0, str(args.avb))

    import av_bench.synchformer.ast as avb_ast
    import av_bench.synchformer.motionformer as avb_mf
    import av_bench.synchformer.vit_helper as avb_vit
    import einops
    import torchaudio
    import transformers
    from av_bench.synchformer.synchformer import Synchformer, make_class_grid
    from av_bench.synchformer.transformer import GlobalTransformer, RandInitPositionalEncoding
    from omegaconf import OmegaConf
    from transformers import ASTConfig as HFASTConfig

    # ---- make the reference tiny -----------------------------------------------------------
    class TinyOmegaConf:
        @staticmethod
        def load(path):
            cfg = OmegaConf.load(path)
            cfg.VIT.EMBED_DIM, cfg.VIT.DEPTH, cfg.VIT.NUM_HEADS = D, 1, 2
            cfg.DATA.TRAIN_CROP_SIZE = cfg.DATA.TEST_CROP_SIZE = CROP
            return cfg

    avb_mf.OmegaConf = TinyOmegaConf
    original_patch_embed_init = avb_vit.PatchEmbed.__init__

    def patch_embed_init(self, img_size=224, **kwargs):  # hard-coded 224 -> the tiny crop
        original_patch_embed_init(self, img_size=CROP, **kwargs)

    avb_vit.PatchEmbed.__init__ = patch_embed_init
    ast_kwargs = dict(hidden_size=D, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * D)
    avb_ast.ASTConfig = lambda: HFASTConfig(**ast_kwargs)

    torch.manual_seed(SEED)
    model = Synchformer()
    model.vproj = nn.Linear(D, D)
    model.aproj = nn.Linear(D, D)
    head_kwargs = dict(n_layer=2, n_head=2, n_embd=D)
    model.transformer = GlobalTransformer(tok_pdrop=0.0, embd_pdrop=0.1, resid_pdrop=0.1, attn_pdrop=0.1, **head_kwargs)
    model.transformer.pos_emb_cfg = RandInitPositionalEncoding(block_shape=[198], n_embd=D)
    model.transformer.off_head = nn.Linear(D, 21)
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:  # biases
                p.copy_(0.3 * noise)
            elif p.shape[0] == 1:  # tokens and position embeddings (1, ..., D)
                p.copy_(0.5 * noise)
            else:  # linear / conv weights: unit-variance outputs
                p.copy_(noise / p.shape[1:].numel() ** 0.5)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.copy_(1.0 + 0.2 * torch.randn(module.weight.shape, generator=gen))
    model.eval()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}

    # ---- reference functions, verbatim from the publisher's files --------------------------
    namespace: dict = {
        "torch": torch,
        "torchaudio": torchaudio,
        "rearrange": einops.rearrange,
        "Synchformer": Synchformer,
        "log": __import__("logging").getLogger("ref"),
    }
    exec(function_source(args.avb / "av_bench/data/audio_dataset.py", "pad_or_truncate"), namespace)
    exec(function_source(args.avb / "av_bench/extract.py", "encode_audio_with_sync"), namespace)
    video_src = function_source(args.avb / "extract_video.py", "encode_video_with_sync")
    exec(video_src.replace("h == 224 and w == 224", f"h == {CROP} and w == {CROP}"), namespace)  # tiny crop
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=16000, win_length=400, hop_length=160, n_fft=1024, n_mels=128
    )

    class Recorder:  # passes through to the model, keeping the AST input
        def __init__(self) -> None:
            self.afeat_input = None

        def extract_afeats(self, x):
            self.afeat_input = x.clone()
            return model.extract_afeats(x)

        def extract_vfeats(self, x):
            return model.extract_vfeats(x)

    io: dict[str, torch.Tensor] = {}
    rec = Recorder()
    with torch.inference_mode():
        # audio: 3 segments (+1000 samples that the floor drops)
        wav = 0.3 * torch.randn(1, 10240 + 2 * 5120 + 1000, generator=gen)
        io["wav"] = wav
        io["afeat"] = namespace["encode_audio_with_sync"](rec, wav, mel)
        io["ast_input"] = rec.afeat_input  # (B, S, 1, 128, 66)

        # video: 24 frames = 2 segments (16, stride 8), uint8 HWC as the media module gives them
        frames = torch.randint(0, 256, (1, 24, CROP, CROP, 3), generator=gen, dtype=torch.uint8)
        io["frames"] = frames
        pixels = (frames.permute(0, 1, 4, 2, 3).float() / 255.0 - 0.5) / 0.5  # v2.ToDtype(scale) + Normalize(.5, .5)
        io["vfeat"] = namespace["encode_video_with_sync"](rec, pixels)

        # head: 24-segment features (an 8 s clip), cut as av_bench/evaluate.py does
        # i.i.d. noise averages out over 198 tokens and every clip gets the same class; a
        # per-clip direction drifting along the segments makes first/last windows differ
        drift = torch.linspace(0.0, 1.0, 24).view(1, 24, 1, 1)

        def features(tokens: int) -> torch.Tensor:
            start, end = torch.randn(2, 3, 1, 1, D, generator=gen)
            return torch.randn(3, 24, tokens, D, generator=gen) + 3.0 * (start + drift * (end - start))

        vis, aud = features(8), features(6)
        io["vis24"], io["aud24"] = vis, aud
        io["logits_first"] = model.compare_v_a(vis[:, :14], aud[:, :14])
        io["logits_last"] = model.compare_v_a(vis[:, -14:], aud[:, -14:])
        grid = make_class_grid(-2, 2, 21)
        scores = []
        for logits in (io["logits_first"], io["logits_last"]):
            top = torch.argmax(logits, dim=-1).numpy()
            scores += [abs(grid[t].item()) for t in top]
        io["offsets_first"] = grid[io["logits_first"].argmax(-1)]
        io["offsets_last"] = grid[io["logits_last"].argmax(-1)]
        io["desync"] = torch.tensor([float(np.mean(scores))])

    margins = []
    for logits in (io["logits_first"], io["logits_last"]):
        top2 = logits.topk(2, dim=-1).values
        margins += (top2[:, 0] - top2[:, 1]).tolist()

    args.out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    save_file(state, str(args.out / "weights.safetensors"))
    save_file({k: v.contiguous() for k, v in io.items()}, str(args.out / "io.safetensors"))
    config = {
        "producer": {
            "av_benchmark_commit": args.mirror_commit,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "torchaudio": torchaudio.__version__,
            "seed": SEED,
        },
        "visual": {
            "embed_dim": D,
            "depth": 1,
            "num_heads": 2,
            "crop_size": CROP,
            "agg_num_heads": 2,
            "agg_ff_dim": 4 * D,
        },
        "audio": {
            "hidden_size": D,
            "depth": ast_kwargs["num_hidden_layers"],
            "num_heads": ast_kwargs["num_attention_heads"],
            "intermediate_size": ast_kwargs["intermediate_size"],
        },
        "head": {"n_embd": D, **{k: v for k, v in head_kwargs.items() if k != "n_embd"}, "pos_len": 198},
        "min_top2_margin": min(margins),
        "desync": io["desync"].item(),
        "keys": sorted(state),
    }
    (args.out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    print(f"{len(state)} tensors, min top-2 logit margin {min(margins):.4f}, desync {io['desync'].item():.3f}")


if __name__ == "__main__":
    main()
