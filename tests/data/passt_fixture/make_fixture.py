"""Generate the PaSST reference fixture with the publisher's own code (hear21passt).

Run in a separate environment that has hear21passt (the code av-benchmark uses):

    python -m venv /tmp/ref_passt --system-site-packages
    /tmp/ref_passt/bin/pip install --no-deps hear21passt==0.0.26
    /tmp/ref_passt/bin/python tests/data/passt_fixture/make_fixture.py

It builds what `hear21passt.base.get_basic_model(mode="all")` builds (AugmentMelSTFT at the
real settings + PasstBasicWrapper), but with a TINY PaSST (embed 32, depth 2, heads 4; real
input geometry 128 x 998, patch 16, stride 10, 527 classes, distilled) whose every parameter
is overwritten with seeded random values (no zero or one left from the init). Then, as
av-benchmark's extract.py does, two short clips are zero-padded to 320000 samples, run through
the wrapper in eval mode, and the output is split into logits [:, :527] and embedding [:, 527:].

Writes, next to this script:
    weights.safetensors   the tiny network's state dict, publisher's key names
    io.safetensors        wav_a, wav_b (short clips), mel_a, mel_b (front end on the unpadded
                          clips), logits, embedding (padded 10 s batch), mel_padded_head (first
                          16 frames of the padded batch's mel), short_logits_a/short_embedding_a
                          (the network on clip a's unpadded mel: time embedding cut)
    fixture.json          versions, tiny config, frame counts, and the key -> shape list of the
                          FULL-size passt_s_swa_p16_128_ap476 network (what the released
                          checkpoint must hold, since get_model loads it strictly into this network)
"""

from __future__ import annotations

import json
import math
from importlib.metadata import version
from pathlib import Path

import torch
from hear21passt.models.passt import PaSST
from hear21passt.models.preprocess import AugmentMelSTFT
from hear21passt.wrapper import PasstBasicWrapper
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
TINY = dict(embed_dim=32, depth=2, num_heads=4)
GEOMETRY = dict(
    img_size=(128, 998),
    patch_size=16,
    stride=(10, 10),
    in_chans=1,
    num_classes=527,
    distilled=True,
    u_patchout=0,
    s_patchout_t=0,
    s_patchout_f=0,
)


def basic_mel() -> AugmentMelSTFT:
    # the exact arguments of hear21passt.base.get_basic_model
    return AugmentMelSTFT(
        n_mels=128,
        sr=32000,
        win_length=800,
        hopsize=320,
        n_fft=1024,
        freqm=48,
        timem=192,
        htk=False,
        fmin=0.0,
        fmax=None,
        norm=1,
        fmin_aug_range=10,
        fmax_aug_range=2000,
    )


def randomise(net: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "head.0.weight")):
                p.copy_(1.0 + 0.2 * noise)  # LayerNorm gains around 1
            elif p.dim() > 1 and "pos_embed" not in name and "token" not in name:
                p.copy_(noise / math.sqrt(math.prod(p.shape[1:])))  # fan-in scaled weights
            else:
                p.copy_(0.3 * noise)  # biases, tokens, positional embeddings


def main() -> None:
    torch.manual_seed(0)
    net = PaSST(**GEOMETRY, **TINY)
    randomise(net, seed=1234)
    model = PasstBasicWrapper(mel=basic_mel(), net=net, mode="all").eval()

    gen = torch.Generator().manual_seed(99)
    t = torch.arange(19200) / 32000.0  # 0.6 s
    wav_a = 0.2 * torch.sin(2 * math.pi * 440.0 * t) + 0.05 * torch.randn(19200, generator=gen)
    wav_b = 0.1 * torch.randn(11200, generator=gen)  # 0.35 s of noise
    wav_b[4000:4400] += 0.8  # a click with a DC step
    padded = torch.stack([torch.nn.functional.pad(w, (0, 320000 - w.numel())) for w in (wav_a, wav_b)])

    with torch.no_grad():
        out = model(padded)  # av-benchmark: logits = out[:, :527], features = out[:, 527:]
        mel_a, mel_b = model.mel(wav_a[None])[0], model.mel(wav_b[None])[0]
        mel_padded = model.mel(padded)
        short_logits, short_embedding = net(mel_a[None, None])
    io = {
        "wav_a": wav_a,
        "wav_b": wav_b,
        "mel_a": mel_a,
        "mel_b": mel_b,
        "logits": out[:, :527],
        "embedding": out[:, 527:],
        "mel_padded_head": mel_padded[:, :, :16],
        "short_logits_a": short_logits[0],
        "short_embedding_a": short_embedding[0],
    }
    save_file({k: v.contiguous().float() for k, v in io.items()}, str(HERE / "io.safetensors"))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(HERE / "weights.safetensors"))

    full = PaSST(**GEOMETRY, embed_dim=768, depth=12, num_heads=12)  # passt_s_swa_p16_128_ap476's kwargs
    meta = {
        "generated_by": "tests/data/passt_fixture/make_fixture.py",
        "packages": {name: version(name) for name in ("hear21passt", "torch", "torchaudio")},
        "tiny_config": {
            **TINY,
            "num_classes": 527,
            "patch_size": 16,
            "stride": 10,
            "input_mels": 128,
            "input_frames": 998,
        },
        "padded_frames": int(mel_padded.shape[-1]),
        "wrapper_output_dim": int(out.shape[1]),
        "full_checkpoint_shapes": {k: list(v.shape) for k, v in full.state_dict().items()},
        "wrapper_extra_keys": sorted(k for k in model.state_dict() if not k.startswith("net.")),
    }
    (HERE / "fixture.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
