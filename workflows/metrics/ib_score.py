"""IB-score: audio-visual agreement as MMAudio's av-benchmark measures it with ImageBind.

Definition (av-benchmark `av_bench/evaluate.py`): IB-Score = the mean over clips of
cosine_similarity(ImageBind vision embedding of the video, ImageBind audio embedding of the
generated audio). Higher is better. Per clip here (`ib_score` column); the report's mean is
av-benchmark's number.

Video side (av-benchmark `av_bench/data/video_dataset.py` and `extract_video.py`):
  - frames at 0.5 fps (`_IMAGEBIND_FPS`), `int(0.5 * duration)` of them (4 for its default 8 s);
    a video that gives fewer is dropped (it has no IB feature, so no score);
  - torchvision v2 `Resize(224, bicubic)` (short side to 224, antialiased), `ToDtype(float32,
    scale=True)`, `Normalize` with CLIP's mean/std; then ImageBind's `SpatialCrop(224, 3)`: three
    224 x 224 crops along the long side (start, centre with offset ceil((L - 224) / 2), end);
  - `encode_video_with_imagebind`: all consecutive frame pairs (i, i + 1) of every crop, a
    (3 * (T - 1), 3, 2, 224, 224) batch whose embeddings (unit vectors) are averaged.
  The 0.5 fps frames come from torio's StreamingMediaDecoder, i.e. ffmpeg's `fps=0.5` filter,
  whose default rounding gives output k the LAST source frame before 2k + 1 s (checked with
  PyAV's ffmpeg on a frame-index video: frames 24, 74, 124, 174 of a 25 fps clip).
  `decode_window` holds the FIRST frame at or after an instant, so the instants here are
  2k + 1 s minus one source frame interval (from the stream's average rate): the same frames for
  constant-frame-rate video; for variable frame rate it can be one frame off.
  Resizing: `decode_window(..., FrameTarget(0.5, 224, "short"))` with the report's `--resize`
  backend; "exact" is torchvision's antialiased bicubic like av-benchmark, "fast" swscale's.

Audio side (av-benchmark `av_bench/data/audio_dataset.py` ImageBindAudioDataset, i.e.
ImageBind's `load_and_transform_audio_data`):
  - the WHOLE generated file at 16 kHz (not cut to `--audio_length`, unlike the other metrics;
    the first channel where the file has several, as kaldi's fbank takes: dub's generated audio is
    mono);
  - pytorchvideo's ConstantClipsPerVideoSampler(clip_duration=2, clips_per_video=3): clip k of 3
    starts at k * max(duration - 2, 0) / 3 (exact fractions) and lasts 2 s; samples
    [int(start * 16000), int(end * 16000)) (fewer at the end of short audio);
  - `waveform2melspec` per clip: the clip's mean is subtracted IN PLACE (the clip is a view of the
    waveform, so overlapping clips of audio shorter than 6 s see the earlier clips' subtraction;
    reproduced here), kaldi fbank (htk_compat, hanning window, 25 ms / 10 ms, 128 mel bins,
    dither 0, no energy), transposed to (128, frames), zero-padded or cut to 204 frames;
  - Normalize(mean -4.268, std 9.138); the three (1, 128, 204) clips go through the audio tower,
    whose embeddings (norm 20) are averaged.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from dub.workflows.metrics.embeddings import BackendUnavailable, available_weights, paired_cosine
from dub.workflows.metrics.weights import WeightsLocator

if TYPE_CHECKING:
    import torch

    from dub.workflows.metrics.models.imagebind import ImageBindConfig, ImageBindVisionAudio

__all__ = [
    "AUDIO_CLIPS",
    "AUDIO_CLIP_S",
    "CLIP_MEAN",
    "CLIP_STD",
    "IB_FPS",
    "IB_SIZE",
    "MEL_MEAN",
    "MEL_STD",
    "NUM_CROPS",
    "SAMPLE_RATE",
    "ImageBindScorer",
    "audio_clip_bounds",
    "audio_mel_clips",
    "build_imagebind",
    "frame_pairs",
    "ib_score",
    "spatial_crops",
    "video_input",
]

IB_FPS = 0.5
IB_SIZE = 224
NUM_CROPS = 3
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAMPLE_RATE = 16000
AUDIO_CLIP_S = 2
AUDIO_CLIPS = 3
MEL_BINS = 128
MEL_FRAMES = 204
MEL_MEAN = -4.268
MEL_STD = 9.138


def ib_score(video_embeddings: np.ndarray, audio_embeddings: np.ndarray) -> np.ndarray:
    """Per-pair cosine similarity of (N, D) video and audio embeddings."""
    return paired_cosine(video_embeddings, audio_embeddings)


# ------------------------------------------------------------------------------ video


def spatial_crops(frames: torch.Tensor, size: int = IB_SIZE) -> list[torch.Tensor]:
    """ImageBind's SpatialCrop(size, 3) on (T, C, H, W): start, centre, end crops along the long
    side (top/centre/bottom when H > W); the centre offset is ceil((L - size) / 2)."""
    h, w = frames.shape[-2:]
    y = int(math.ceil((h - size) / 2))
    x = int(math.ceil((w - size) / 2))
    crops = []
    for index in range(NUM_CROPS):
        yi, xi = y, x
        if h > w:
            yi = (0, y, h - size)[index]
        else:
            xi = (0, x, w - size)[index]
        crops.append(frames[..., yi : yi + size, xi : xi + size])
    return crops


def video_input(frames_u8: np.ndarray, size: int = IB_SIZE) -> torch.Tensor:
    """(T, H, W, 3) uint8 frames with the short side already `size` -> the (3 crops, T, 3, size,
    size) float32 tensor av-benchmark feeds (scaled to [0, 1], CLIP-normalised, cropped)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(frames_u8)).permute(0, 3, 1, 2).float() / 255.0
    if min(x.shape[-2:]) != size:
        raise ValueError(f"frames must have their short side resized to {size}; got {tuple(frames_u8.shape)}")
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return torch.stack(spatial_crops((x - mean) / std, size))


def frame_pairs(video: torch.Tensor) -> torch.Tensor:
    """(crops, T, 3, H, W) -> (crops * (T - 1), 3, 2, H, W): every consecutive pair (i, i + 1),
    pair-major as av-benchmark concatenates them (clip index = i * crops + crop)."""
    import torch

    crops, t = video.shape[:2]
    if t < 2:
        raise ValueError(f"IB-score needs at least 2 frames at {IB_FPS} fps, got {t}")
    pairs = torch.cat([video[:, i : i + 2] for i in range(t - 1)], dim=0)  # (pairs * crops, 2, 3, H, W)
    return pairs.permute(0, 2, 1, 3, 4).contiguous()


def ib_frames(path: str, duration_s: float | None, backend: str = "swscale") -> np.ndarray:
    """The (T, H, W, 3) uint8 frames av-benchmark takes at 0.5 fps, short side resized to 224;
    T = int(0.5 * duration_s) (duration None: the whole video). Fewer frames than that (a video
    shorter than duration_s) raise ValueError: av-benchmark drops such a clip."""
    from dub.workflows.media.decode import FrameTarget, decode_window
    from dub.workflows.media.streams import open_media, pick_video_stream

    with open_media(path) as container:
        stream = pick_video_stream(container, path)
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    step = 1.0 / float(rate) if rate else 1.0 / 25.0
    start = max(0.0, 1.0 / (2 * IB_FPS) - step)  # 1 s - one frame: the last frame before 1 s, 3 s, ...
    want = None if duration_s is None else int(IB_FPS * duration_s)
    window = None if want is None else max(want / IB_FPS - start, 1e-3)
    frames = decode_window(path, start, window, [FrameTarget(IB_FPS, IB_SIZE, "short")], backend=backend).frames[0]
    if want is not None and len(frames) < want:
        raise ValueError(
            f"video gives {len(frames)} frames at {IB_FPS} fps, IB-score needs {want} "
            f"({duration_s:g} s, as av-benchmark's --audio_length)"
        )
    return frames[:want] if want is not None else frames


# ------------------------------------------------------------------------------ audio


def audio_clip_bounds(num_samples: int, sample_rate: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """Sample ranges of the 3 clips of pytorchvideo's ConstantClipsPerVideoSampler(2 s, 3 clips)."""
    duration = num_samples / sample_rate
    clip = Fraction(AUDIO_CLIP_S)
    max_start = Fraction(max(duration - clip, 0))
    step = max_start / AUDIO_CLIPS
    bounds = []
    for k in range(AUDIO_CLIPS):
        start = step * k
        bounds.append((int(start * sample_rate), int((start + clip) * sample_rate)))
    return bounds


def audio_mel_clips(wav_16k: np.ndarray) -> torch.Tensor:
    """(L,) 16 kHz audio -> (3, 1, 128, 204) normalised log-mel clips, as ImageBind's
    load_and_transform_audio_data (in-place mean removal on overlapping clips included)."""
    import torch
    import torchaudio

    wav = torch.as_tensor(np.asarray(wav_16k, dtype=np.float32)).reshape(1, -1).clone()
    if wav.shape[1] < 400:  # kaldi needs one 25 ms frame
        raise ValueError(f"audio too short for ImageBind's fbank: {wav.shape[1]} samples at {SAMPLE_RATE} Hz")
    clips = []
    for a, b in audio_clip_bounds(wav.shape[1]):
        view = wav[:, a:b]
        view -= view.mean()  # in place, on the waveform, as waveform2melspec does
        fbank = torchaudio.compliance.kaldi.fbank(
            view,
            htk_compat=True,
            sample_frequency=SAMPLE_RATE,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=MEL_BINS,
            dither=0.0,
            frame_length=25,
            frame_shift=10,
        ).t()
        pad = MEL_FRAMES - fbank.shape[1]
        fbank = torch.nn.functional.pad(fbank, (0, pad)) if pad > 0 else fbank[:, :MEL_FRAMES]
        clips.append(fbank[None])
    return (torch.stack(clips) - MEL_MEAN) / MEL_STD


# ------------------------------------------------------------------------------ scorer


class ImageBindScorer:
    """Embeddings of a loaded ImageBind vision/audio model, and the per-clip IB-score."""

    sample_rate = SAMPLE_RATE

    def __init__(
        self,
        model: ImageBindVisionAudio,
        device: str = "cpu",
        *,
        duration_s: float | None = 8.0,
        decode_backend: str = "swscale",
        batch: int = 8,
    ) -> None:
        if duration_s is not None and duration_s < 2 / IB_FPS:
            raise ValueError(f"IB-score needs at least {2 / IB_FPS:g} s of video (2 frames at {IB_FPS} fps)")
        self.model = model
        self.device = device
        self.duration_s = duration_s
        self.decode_backend = decode_backend
        self.batch = batch

    def video_embedding(self, frames_u8: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) frames (short side 224) -> (D,) mean of the unit pair embeddings."""
        import torch

        pairs = frame_pairs(video_input(frames_u8))
        rows = []
        with torch.inference_mode():
            for start in range(0, len(pairs), self.batch):
                x = pairs[start : start + self.batch].to(self.device)
                rows.append(self.model.vision_clips(x).float().cpu())
        return torch.cat(rows).mean(dim=0).numpy()

    def audio_embedding(self, wav_16k: np.ndarray) -> np.ndarray:
        """Whole 16 kHz waveform -> (D,) mean of the 3 clip embeddings (norm 20 each)."""
        import torch

        with torch.inference_mode():
            mels = audio_mel_clips(wav_16k).to(self.device)
            return self.model.audio_clips(mels).float().cpu().mean(dim=0).numpy()

    def clip_score(self, video_path: str, wav_16k: np.ndarray) -> float:
        frames = ib_frames(str(video_path), self.duration_s, self.decode_backend)
        return float(ib_score(self.video_embedding(frames), self.audio_embedding(wav_16k))[0])


def build_imagebind(
    locator: WeightsLocator,
    device: str = "cpu",
    config: ImageBindConfig | None = None,
    *,
    duration_s: float | None = 8.0,
    decode_backend: str = "swscale",
) -> ImageBindScorer:
    """The IB-score model from the weights registry; BackendUnavailable (with the reason) when
    `imagebind_huge.pth` is missing or cannot be used."""
    path = available_weights(locator, "imagebind")
    from dub.workflows.metrics.models.imagebind import IMAGEBIND_HUGE, load_imagebind

    try:
        model = load_imagebind(path, config or IMAGEBIND_HUGE, device)
    except (ValueError, KeyError, OSError) as exc:
        raise BackendUnavailable(f"{path.name} found, but it cannot be used for IB-score: {exc}") from exc
    return ImageBindScorer(model, device, duration_s=duration_s, decode_backend=decode_backend)
