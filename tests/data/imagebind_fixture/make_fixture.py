"""Generate the ImageBind reference fixture with the publisher's own model code.

Run in a separate environment that has ImageBind's code (imagebind-packaged 0.1.2 is a packaging
of facebookresearch/ImageBind's imagebind/ folder; its data.py imports pytorchvideo's transforms,
which need an old torchvision, so those imports are wrapped in try/except there: only
`waveform2melspec`, `get_clip_timepoints` and `SpatialCrop` of data.py are used here):

    python -m venv --system-site-packages /tmp/ibvenv
    /tmp/ibvenv/bin/pip download --no-deps imagebind-packaged==0.1.2   # unpack, copy imagebind/
    /tmp/ibvenv/bin/pip install einops ftfy regex iopath
    /tmp/ibvenv/bin/pip install --no-deps pytorchvideo==0.1.5
    /tmp/ibvenv/bin/python tests/data/imagebind_fixture/make_fixture.py

It builds a TINY `ImageBindModel` through the reference constructor (vision width 16, 2 blocks,
2 heads; audio width 16, 2 blocks, 2 heads; out 24; the real input geometry: 2-frame 224 x 224
video, Conv3d kernel (2, 14, 14); 128 mel x 204 frames audio, Conv2d kernel 16 stride 10), sets
every vision/audio parameter to seeded random values (no init zero or one left), and runs, in
eval mode, what av-benchmark runs:

  video: uint8 frames -> torchvision v2 Resize(224, bicubic) -> ToDtype(float32, scale) ->
         Normalize(CLIP mean/std) -> SpatialCrop(224, 3) (ImageBind's data.py) -> stacked
         (1, 3 crops, T, C, H, W) -> all consecutive 2-frame clips concatenated along the clip
         axis, rearranged to (1, N, C, 2, H, W) -> model({vision}) (mean over N of unit vectors)
  audio: 16 kHz waveform -> ConstantClipsPerVideoSampler(2 s, 3 clips) -> waveform2melspec
         (kaldi fbank, 128 mel, 204 frames; its in-place mean removal on views of the waveform
         included) -> Normalize(-4.268, 9.138) -> (1, 3, 1, 128, 204) -> model({audio})

Writes, next to this script:
    weights.safetensors   the tiny model's vision and audio keys (reference names)
    io.safetensors        frames_u8 (T, H, W, 3) small source frames; resized_u8_sub (T, 3, H', W')
                          after v2.Resize, every 4th row and column; video_input_sub (the model's (3, T, 3, 224, 224) input,
                          every 8th row and column); vision_embedding (1, 24);
                          wav_a (2.5 s), wav_b (1.2 s); mel_a_sub / mel_b_sub: the (3, 1, 128, 204)
                          normalised clips, every 2nd mel bin and frame; audio_embedding (2, 24) (with the x20 logit scale);
                          vision_clip_embeddings (6, 24) per clip before the mean
    fixture.json          versions, tiny config, clip timepoints, statistics of the full video
                          input, and the key -> shape list of the FULL imagebind_huge model (built
                          on the meta device from the reference constructor: what the released
                          imagebind_huge.pth holds, since the reference loads it strictly)
"""

from __future__ import annotations

import json
import math
from importlib.metadata import version
from pathlib import Path

import torch
from einops import rearrange
from imagebind.data import SpatialCrop, get_clip_timepoints, waveform2melspec
from imagebind.models.imagebind_model import ImageBindModel, ModalityType, imagebind_huge
from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler
from safetensors.torch import save_file
from torchvision.transforms import v2

HERE = Path(__file__).resolve().parent
TINY = dict(
    out_embed_dim=24,
    vision_embed_dim=16,
    vision_num_blocks=2,
    vision_num_heads=2,
    audio_embed_dim=16,
    audio_num_blocks=2,
    audio_num_heads=2,
    text_embed_dim=8,
    text_num_blocks=1,
    text_num_heads=2,
    depth_embed_dim=8,
    depth_num_blocks=1,
    depth_num_heads=2,
    thermal_embed_dim=8,
    thermal_num_blocks=1,
    thermal_num_heads=2,
    imu_embed_dim=8,
    imu_num_blocks=1,
    imu_num_heads=2,
)
MODALITIES = ("vision", "audio")
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def ours(key: str) -> bool:
    return key.split(".")[1] in MODALITIES  # modality_<part>.<modality>.…


def randomise(model: torch.nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not ours(name):
                continue
            noise = torch.randn(p.shape, generator=gen)
            if (
                "norm" in name
                and name.endswith("weight")
                or name.endswith(("heads.vision.0.weight", "heads.audio.0.weight", "pre_transformer_layer.0.weight"))
            ):
                p.copy_(1.0 + 0.2 * noise)  # LayerNorm gains around 1
            elif p.dim() > 1 and "pos_embed" not in name and "cls_token" not in name and "bias_" not in name:
                p.copy_(noise / math.sqrt(math.prod(p.shape[1:])))  # fan-in scaled weights
            else:
                p.copy_(0.3 * noise)  # biases, bias_k/v, tokens, positional embeddings


def audio_clips(waveform: torch.Tensor) -> tuple[torch.Tensor, list]:
    """ImageBind's load_and_transform_audio_data (= av-benchmark's ImageBindAudioDataset) from a
    (1, L) 16 kHz tensor instead of a file."""
    sampler = ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=3)
    waveform = waveform.clone()
    points = get_clip_timepoints(sampler, waveform.size(1) / 16000)
    clips = []
    for start, end in points:
        clip = waveform[:, int(start * 16000) : int(end * 16000)]
        clips.append(waveform2melspec(clip, 16000, 128, 204))
    normalize = v2.Normalize(mean=[-4.268], std=[9.138])
    return torch.stack([normalize(c) for c in clips]), [(float(s), float(e)) for s, e in points]


def main() -> None:
    torch.manual_seed(0)
    model = ImageBindModel(**TINY)
    randomise(model, seed=4321)
    model.eval()

    # video: 3 small frames (T, H, W, 3), landscape so that the three crops differ
    gen = torch.Generator().manual_seed(7)
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(64.0), indexing="ij")
    frames = []
    for t in range(3):
        base = torch.stack(
            [torch.sin(xx / (5 + t) + yy / 7), torch.cos(yy / (4 + t) - xx / 11), torch.sin((xx + yy) / (6 + 2 * t))],
            dim=-1,
        )
        frames.append(((base * 0.5 + 0.5) * 200 + 20 * torch.rand(40, 64, 3, generator=gen)).round())
    frames_u8 = torch.stack(frames).clamp(0, 255).to(torch.uint8)  # (T, H, W, 3)
    chunk = frames_u8.permute(0, 3, 1, 2)  # (T, C, H, W), as torio's rgb24 chunk
    resize = v2.Resize(224, interpolation=v2.InterpolationMode.BICUBIC)
    resized = resize(chunk)
    transform = v2.Compose(
        [resize, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=CLIP_MEAN, std=CLIP_STD)]
    )
    video = torch.stack(SpatialCrop(224, 3)([transform(chunk)]))  # (3, T, C, 224, 224)
    x = video[None]
    b, crops, t, c, h, w = x.shape
    clips = torch.cat([x[:, :, i : i + 2] for i in range(t - 1)], dim=1)
    clips = rearrange(clips, "b n t c h w -> b n c t h w")

    # audio: 2.5 s (three overlapping clips) and 1.2 s (shorter than one clip)
    gen = torch.Generator().manual_seed(11)
    ta = torch.arange(40000) / 16000.0
    wav_a = 0.3 * torch.sin(2 * math.pi * 523.0 * ta) * (ta < 1.4) + 0.05 * torch.randn(40000, generator=gen) + 0.02
    tb = torch.arange(19200) / 16000.0
    wav_b = 0.2 * torch.sin(2 * math.pi * 180.0 * tb) + 0.1 * torch.randn(19200, generator=gen)
    wav_b[6000:6400] += 0.7
    mel_a, points_a = audio_clips(wav_a[None])
    mel_b, points_b = audio_clips(wav_b[None])

    with torch.no_grad():
        vision = model({ModalityType.VISION: clips})[ModalityType.VISION]
        per_clip = model({ModalityType.VISION: clips[0][:, None]})[ModalityType.VISION]  # (N, out), unit rows
        audio = model({ModalityType.AUDIO: torch.stack([mel_a, mel_b])})[ModalityType.AUDIO]

    io = {
        "frames_u8": frames_u8,
        "resized_u8_sub": resized[..., ::4, ::4],
        "video_input_sub": video[..., ::8, ::8],
        "vision_embedding": vision,
        "vision_clip_embeddings": per_clip,
        "wav_a": wav_a,
        "wav_b": wav_b,
        "mel_a_sub": mel_a[..., ::2, ::2],
        "mel_b_sub": mel_b[..., ::2, ::2],
        "audio_embedding": audio,
    }
    save_file({k: v.contiguous() for k, v in io.items()}, str(HERE / "io.safetensors"))
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if ours(k)}
    save_file(weights, str(HERE / "weights.safetensors"))

    linspace = torch.linspace  # the trunk's drop-path schedule calls .item(): keep it off the meta device
    torch.linspace = lambda *args, **kwargs: linspace(*args, **{**kwargs, "device": "cpu"})
    with torch.device("meta"):  # the full model's layout without 4.8 GB of memory
        full = imagebind_huge(pretrained=False)
    torch.linspace = linspace
    meta = {
        "generated_by": "tests/data/imagebind_fixture/make_fixture.py",
        "packages": {
            "imagebind-packaged": "0.1.2 (unpacked sdist, data.py imports patched as above)",
            **{name: version(name) for name in ("torch", "torchvision", "torchaudio", "pytorchvideo")},
        },
        "tiny_config": TINY,
        "video_input_shape": list(video.shape),
        "video_input_stats": {"sum": float(video.double().sum()), "abs_sum": float(video.double().abs().sum())},
        "clip_timepoints": {"wav_a": points_a, "wav_b": points_b},
        "tiny_keys": sorted(weights),
        "full_checkpoint_shapes": {k: list(v.shape) for k, v in full.state_dict().items()},
    }
    (HERE / "fixture.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
