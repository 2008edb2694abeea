"""Audio files: encode float arrays (AAC / FLAC / Opus / WAV), read any audio track back as
float32, resample.

Arrays are float32 in [-1, 1], (L,) mono or (C, L) channels-first. Resampling is polyphase
(scipy `resample_poly`), one implementation for encoding and reading. Encoded frames carry
pts in samples (time base 1 / rate), so the container knows the exact start and length.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from math import gcd
from pathlib import Path

import numpy as np

from dub.storage.atomic import atomic_path
from dub.workflows.media.errors import MediaError


@dataclass(frozen=True)
class AudioCodec:
    name: str  # the codec's short name in dub (--audio-codec)
    encoder: str  # FFmpeg encoder
    rates: tuple[int, ...] | None  # sample rates it can store (None: any)
    default_rate: int  # used when the input rate is not storable
    extensions: tuple[str, ...]  # stand-alone file extensions, first is the default


AUDIO_CODECS = {
    "aac": AudioCodec(
        "aac",
        "aac",
        (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000),
        48000,
        (".m4a", ".mp4", ".mka", ".mkv"),
    ),
    "flac": AudioCodec("flac", "flac", None, 48000, (".flac", ".mka", ".mkv", ".mp4")),
    "opus": AudioCodec("opus", "libopus", (48000,), 48000, (".opus", ".ogg", ".mka", ".mkv", ".webm", ".mp4")),
    "pcm": AudioCodec("pcm", "pcm_s16le", None, 48000, (".wav", ".mka", ".mkv")),
}
_FORMATS = {
    ".m4a": "ipod",
    ".mp4": "mp4",
    ".mov": "mov",
    ".mka": "matroska",
    ".mkv": "matroska",
    ".webm": "webm",
    ".flac": "flac",
    ".opus": "ogg",
    ".ogg": "ogg",
    ".wav": "wav",
}


def codec_spec(codec: str) -> AudioCodec:
    try:
        return AUDIO_CODECS[codec]
    except KeyError:
        raise ValueError(f"unknown audio codec {codec!r}; choose from {sorted(AUDIO_CODECS)}") from None


def storable_rate(codec: str, sample_rate: int) -> int:
    """The rate `codec` will be written at: the input's when the codec can store it."""
    spec = codec_spec(codec)
    return sample_rate if spec.rates is None or sample_rate in spec.rates else spec.default_rate


def resample(audio: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Polyphase resampling along the last axis; output length ceil(L * dst / src)."""
    audio = np.asarray(audio, dtype=np.float32)
    if src_rate == dst_rate:
        return audio
    from scipy.signal import resample_poly

    g = gcd(int(src_rate), int(dst_rate))
    return resample_poly(audio, int(dst_rate) // g, int(src_rate) // g, axis=-1).astype(np.float32)


def as_channels_first(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return audio[None]
    if audio.ndim != 2 or audio.shape[0] > 8:
        raise ValueError(f"audio must be (L,) or (C, L) with C <= 8, got shape {audio.shape}")
    return audio


def add_audio_stream(container, codec: str, rate: int, channels: int, bitrate: int | None = None):
    """An output audio stream for `codec` at `rate` with 1 or 2 channels."""
    spec = codec_spec(codec)
    stream = container.add_stream(spec.encoder, rate=rate)
    stream.layout = "mono" if channels == 1 else "stereo"
    if bitrate:
        stream.bit_rate = bitrate
    return stream


def encode_frames(stream, audio: np.ndarray, rate: int, pts_offset: int = 0, chunk: int = 4096):
    """Encode (C, L) float audio on `stream`; yields packets. pts counts samples from
    `pts_offset` (time base 1 / rate); the encoder re-chunks to its own frame size."""
    import av

    layout = "mono" if audio.shape[0] == 1 else "stereo"
    time_base = Fraction(1, rate)
    for pos in range(0, audio.shape[-1], chunk):
        block = np.ascontiguousarray(audio[:, pos : pos + chunk])
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = pts_offset + pos
        frame.time_base = time_base
        yield from stream.encode(frame)
    yield from stream.encode(None)


def encode_audio_file(
    audio: np.ndarray,
    sample_rate: int,
    path: str | Path,
    codec: str = "aac",
    *,
    output_rate: int | None = None,
    bitrate: int | None = None,
) -> Path:
    """Write `audio` to `path` (container from the extension), resampled to `output_rate`
    (None: the input rate where the codec can store it, else the codec's default)."""
    path = Path(path)
    spec = codec_spec(codec)
    suffix = path.suffix.lower()
    if suffix not in spec.extensions:
        raise ValueError(
            f"{codec} audio cannot be written to a {suffix or 'no-extension'} file; use one of {list(spec.extensions)}"
        )
    with atomic_path(path, keep_suffix=True) as tmp:
        _encode(str(tmp), _FORMATS[suffix], audio, sample_rate, codec, output_rate, bitrate, None)
    return path


def encode_audio_bytes(
    audio: np.ndarray,
    sample_rate: int,
    codec: str = "flac",
    container_format: str = "flac",
    *,
    output_rate: int | None = None,
    bitrate: int | None = None,
    options: dict[str, str] | None = None,
) -> bytes:
    """`audio` as an encoded file in memory (WebDataset samples, audio embedded in a page)."""
    import io

    buf = io.BytesIO()
    _encode(buf, container_format, audio, sample_rate, codec, output_rate, bitrate, options)
    return buf.getvalue()


def _encode(
    target,
    container_format: str,
    audio: np.ndarray,
    sample_rate: int,
    codec: str,
    output_rate: int | None,
    bitrate: int | None,
    options: dict[str, str] | None,
) -> None:
    import av

    audio = as_channels_first(audio)
    if audio.shape[0] > 2:
        raise ValueError(f"only mono or stereo audio can be encoded, got {audio.shape[0]} channels")
    rate = output_rate or storable_rate(codec, sample_rate)
    audio = np.clip(resample(audio, sample_rate, rate), -1.0, 1.0)
    with av.open(target, "w", format=container_format) as container:
        stream = add_audio_stream(container, codec, rate, audio.shape[0], bitrate)
        if options:
            stream.options = options
        for packet in encode_frames(stream, audio, rate):
            container.mux(packet)


def read_audio(
    path: str | Path | bytes,
    sample_rate: int | None = None,
    mono: bool = True,
    *,
    start_s: float = 0.0,
    duration_s: float | None = None,
) -> np.ndarray:
    """The first audio track of `path` (or of an encoded file held in `bytes`, e.g. a
    WebDataset sample) as float32: (L,) when `mono` (channels averaged), else (C, L);
    resampled to `sample_rate` (None: the file's rate). Time 0 is the track's first sample;
    [start_s, start_s + duration_s) selects a part."""
    audio, rate = read_audio_native(path, start_s=start_s, duration_s=duration_s)
    if mono:
        audio = audio.mean(axis=0, keepdims=True)
    if sample_rate and sample_rate != rate:
        audio = resample(audio, rate, sample_rate)
    return audio[0] if mono else audio


def read_audio_native(
    path: str | Path | bytes, *, start_s: float = 0.0, duration_s: float | None = None
) -> tuple[np.ndarray, int]:
    """(C, L) float32 audio at the file's own rate, and that rate (`path` may be the bytes of
    an encoded file)."""
    import io

    import av

    from dub.workflows.media.streams import as_location, open_media

    if isinstance(path, (bytes, bytearray)):
        opened, name = av.open(io.BytesIO(path)), "the audio bytes"
    else:
        path = as_location(path)
        opened, name = open_media(path), Path(path).name
    with opened as container:
        if not container.streams.audio:
            raise MediaError("no_audio", f"{name} has no audio track")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        first = None
        chunks = []
        resampler = None
        try:
            for frame in container.decode(stream):
                if first is None:
                    first = frame.pts if frame.pts is not None else 0
                if resampler is None:  # planar float in the file's own layout and rate
                    resampler = av.AudioResampler(format="fltp", layout=frame.layout.name, rate=rate)
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())
            if resampler is not None:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray())
        except av.error.FFmpegError as exc:
            if not chunks:
                raise MediaError("undecodable", f"the audio of {name} could not be decoded: {exc}") from exc
        if not chunks:
            return np.zeros((1, 0), np.float32), rate
        audio = np.concatenate(chunks, axis=-1).astype(np.float32, copy=False)
        if stream.duration and stream.time_base:
            # decoders emit whole codec frames; the container knows the exact length
            exact = int(round(float(stream.duration * stream.time_base) * rate))
            audio = audio[:, :exact] if 0 < exact < audio.shape[-1] else audio
    lo = int(round(start_s * rate))
    hi = audio.shape[-1] if duration_s is None else lo + int(round(duration_s * rate))
    return audio[:, lo:hi], rate
