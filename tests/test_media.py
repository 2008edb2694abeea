"""The media module on real files written with PyAV: decode semantics, windows, audio I/O."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from dub.workflows.media.audio import encode_audio_file, read_audio, resample
from dub.workflows.media.decode import CLIP_TARGET, SYNC_TARGET, FrameTarget, decode_window
from dub.workflows.media.errors import MediaError
from dub.workflows.media.windows import Window, plan_windows, stitch
from tests.video_factory import make_video, read_frame_index


def expected_indices(frame_times, start_s: float, count: int, fps: float) -> list[int]:
    """MMAudio's rule from the truth: instant start + k / fps takes the first frame at or after
    it, or the last frame once the stream has ended (hold)."""
    out = []
    for k in range(count):
        instant = Fraction(start_s).limit_denominator(1000) + Fraction(k) / Fraction(fps).limit_denominator(1001)
        later = [i for i, t in enumerate(frame_times) if Fraction(t).limit_denominator(100000) >= instant]
        out.append((later[0] if later else len(frame_times) - 1) % 37)
    return out


def red_fraction(region: np.ndarray) -> float:
    r, g, b = (region[..., c].astype(int) for c in range(3))
    return float(np.mean((r > 150) & (g < 110) & (b < 110)))


# -- decode ---------------------------------------------------------------------------------
# Durations (pytest.approx, rel 1e-6) are sums and differences of float timestamps: exact up to
# the last bits of their binary representation.


def test_low_fps_source_repeats_frames_at_8fps(tmp_path):
    clip = make_video(tmp_path / "four_fps.mp4", seconds=3.0, fps=4, size=(64, 48), pattern="frame_index")
    window = decode_window(clip.path, 0.0, None, [FrameTarget(8.0, 32, "resize")])
    frames = window.frames[0]
    assert window.duration_s == pytest.approx(3.0)
    assert frames.shape == (24, 32, 32, 3)
    got = [read_frame_index(f) for f in frames]
    assert got == expected_indices(clip.frame_times, 0.0, 24, 8.0)
    assert got[:6] == [0, 1, 1, 2, 2, 3]  # sample-and-hold: each 4 fps frame appears twice
    assert got[-1] == got[-2] == clip.num_frames - 1  # the last frame is held to the end


def test_window_decode_gives_the_frames_of_that_window(tmp_path):
    # key frame every 12 frames, so decoding [2, 4) really seeks into the middle of the file
    clip = make_video(tmp_path / "index.mp4", seconds=6.0, fps=25, size=(96, 64), pattern="frame_index", gop=12)
    window = decode_window(clip.path, 2.0, 2.0, [FrameTarget(8.0, 48, "resize"), FrameTarget(25.0, 32, "crop")])
    clip_frames, sync_frames = window.frames
    assert window.duration_s == pytest.approx(2.0)
    assert clip_frames.shape == (16, 48, 48, 3) and sync_frames.shape == (50, 32, 32, 3)
    assert [read_frame_index(f) for f in sync_frames] == [i % 37 for i in range(50, 100)]
    assert [read_frame_index(f) for f in clip_frames] == expected_indices(clip.frame_times, 2.0, 16, 8.0)


def test_window_past_the_end_is_short_and_exact(tmp_path):
    clip = make_video(tmp_path / "short.mp4", seconds=3.0, fps=25, size=(64, 48), pattern="frame_index")
    window = decode_window(clip.path, 2.5, 8.0, [CLIP_TARGET, SYNC_TARGET])
    assert window.duration_s == pytest.approx(0.5)
    assert [f.shape[0] for f in window.frames] == [4, 13]  # ceil(0.5 * 8), ceil(0.5 * 25)
    assert read_frame_index(window.frames[1][-1]) == (clip.num_frames - 1) % 37
    beyond = decode_window(clip.path, 5.0, 1.0, [CLIP_TARGET])
    assert beyond.duration_s == 0.0 and beyond.frames[0].shape == (0, 384, 384, 3)


def test_variable_frame_rate_follows_the_timestamps(tmp_path):
    clip = make_video(tmp_path / "vfr.mp4", seconds=2.0, fps=20, size=(64, 48), pattern="frame_index", vfr=True)
    window = decode_window(clip.path, 0.0, None, [FrameTarget(25.0, 16, "resize")])
    count = window.frames[0].shape[0]
    assert count == math.ceil(clip.duration_s * 25 - 1e-6)
    assert [read_frame_index(f) for f in window.frames[0]] == expected_indices(clip.frame_times, 0.0, count, 25.0)


def test_model_sizes_and_rotation_make_frames_upright(tmp_path):
    # The red marker sits top-left in the stored frame; rotated 90 degrees counter-clockwise
    # for display it must end up bottom-left.
    square = make_video(tmp_path / "square_rot.mp4", seconds=0.5, fps=8, size=(64, 64), rotation=90)
    clip_frames, sync_frames = decode_window(square.path, 0.0, None).frames
    assert clip_frames.shape[1:] == (384, 384, 3) and sync_frames.shape[1:] == (224, 224, 3)
    for frame, size in ((clip_frames[0], 384), (sync_frames[0], 224)):
        corner = size // 10
        assert red_fraction(frame[-corner:, :corner]) > 0.9  # bottom-left
        assert red_fraction(frame[:corner, :corner]) < 0.05  # not top-left any more

    wide = make_video(tmp_path / "wide_rot.mp4", seconds=0.5, fps=8, size=(96, 48), rotation=90)
    plain = make_video(tmp_path / "wide.mp4", seconds=0.5, fps=8, size=(96, 48))
    rotated = decode_window(wide.path, 0.0, None, [CLIP_TARGET]).frames[0][0]
    upright = decode_window(plain.path, 0.0, None, [CLIP_TARGET]).frames[0][0]
    # the 6 px marker: stored 96 x 48 it spans 1/16 of the width and 1/8 of the height; displayed
    # 48 wide x 96 tall (bottom-left) it spans 1/8 of the width and 1/16 of the height
    assert red_fraction(rotated[384 - 20 :, :44]) > 0.9
    assert red_fraction(rotated[:44, :20]) < 0.05
    assert red_fraction(upright[:44, :20]) > 0.9 and red_fraction(upright[384 - 20 :, :44]) < 0.05
    sync = decode_window(wide.path, 0.0, None, [SYNC_TARGET]).frames[0]
    assert sync.shape == (13, 224, 224, 3) and sync.dtype == np.uint8


def test_odd_size_ten_bit_and_rare_codecs_decode(tmp_path):
    cases = [
        make_video(tmp_path / "odd.mp4", seconds=0.5, fps=12, size=(175, 97), pix_fmt="yuv444p"),
        make_video(tmp_path / "ten.mp4", seconds=0.5, fps=12, pix_fmt="yuv420p10le"),
        make_video(tmp_path / "m4.avi", seconds=0.5, fps=12, codec="mpeg4"),
        make_video(tmp_path / "v.webm", seconds=0.5, fps=12, codec="libvpx-vp9"),
    ]
    for clip in cases:
        window = decode_window(clip.path, 0.0, None, [CLIP_TARGET, SYNC_TARGET])
        assert window.duration_s == pytest.approx(clip.duration_s)
        assert window.frames[0].shape == (4, 384, 384, 3), clip.path.name
        assert window.frames[1].shape == (13, 224, 224, 3), clip.path.name
        assert 30 < window.frames[0].mean() < 220  # real picture, not black or white


def test_decode_bad_input_raises_media_error(tmp_path):
    (tmp_path / "notes.mp4").write_text("hello")
    with pytest.raises(MediaError) as err:
        decode_window(tmp_path / "notes.mp4")
    assert err.value.kind == "not_media" and "text" in str(err.value)
    with pytest.raises(ValueError, match="duration_s"):
        decode_window(tmp_path / "notes.mp4", 0.0, 0.0)


# -- windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize("duration", [0.5, 8.0, 8.01, 12.3, 15.0, 15.01, 20.0, 61.3])
def test_plan_windows_covers_the_duration(duration):
    windows = plan_windows(duration, window_s=8.0, overlap_s=1.0)
    assert windows[0].start_s == 0.0
    assert windows[-1].end_s == pytest.approx(duration)
    if duration <= 8.0:
        assert windows == [Window(0.0, duration)]
        return
    assert all(w.duration_s == pytest.approx(8.0) for w in windows)
    overlaps = [a.end_s - b.start_s for a, b in zip(windows, windows[1:])]
    # float64 window bounds: 1e-6 s is far above their rounding (~1e-14 s), far below a sample
    assert min(overlaps) >= 1.0 - 1e-6
    assert max(overlaps) - min(overlaps) < 1e-6  # evenly spread
    fewer = len(windows) - 1  # one window less could not cover it with the overlap
    assert fewer * 8.0 - (fewer - 1) * 1.0 < duration


def test_plan_windows_rejects_bad_arguments():
    with pytest.raises(ValueError):
        plan_windows(0.0)
    with pytest.raises(ValueError):
        plan_windows(10.0, window_s=8.0, overlap_s=8.0)


def test_stitch_crossfade_is_equal_power():
    sr = 1000
    windows = [Window(0.0, 8.0), Window(7.0, 15.0)]
    ones, zeros = np.ones(8000, np.float32), np.zeros(8000, np.float32)
    fade_out = stitch([ones, zeros], windows, sr)
    fade_in = stitch([zeros, ones], windows, sr)
    assert fade_out.shape == (15000,)
    # gains: cos^2 + sin^2 = 1, computed and stored in float32 (a few u32 ~ 2e-7)
    np.testing.assert_allclose(fade_out**2 + fade_in**2, 1.0, atol=1e-6)
    assert np.all(fade_out[:7000] == 1) and np.all(fade_in[8000:] == 1)
    crossfade = slice(7000, 8000)
    assert np.all(np.diff(fade_out[crossfade]) < 0) and np.all(np.diff(fade_in[crossfade]) > 0)

    # identical constant signals: untouched outside the overlap, c * (cos + sin) inside
    constant = stitch([0.5 * ones, 0.5 * ones], windows, sr)  # float32: numpy's rtol 1e-7 and atol 1e-6
    np.testing.assert_allclose(constant[:7000], 0.5)
    np.testing.assert_allclose(constant[8000:], 0.5)
    np.testing.assert_allclose(constant[crossfade], 0.5 * (fade_out[crossfade] + fade_in[crossfade]), atol=1e-6)
    # and their power through the junction: equal-power gains keep sum of squared gains at 1
    # (the mean square of two uncorrelated signals stays level)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(8000).astype(np.float32), rng.standard_normal(8000).astype(np.float32)
    mixed = stitch([a, b], windows, sr)
    # a mean of 1000 squared normals: sampling std sqrt(2 / 1000) = 0.045; 0.1 is 2.2 of it (seeded)
    assert np.mean(mixed[crossfade] ** 2) == pytest.approx(1.0, abs=0.1)


def test_stitch_short_crossfade_stereo_and_single_window():
    sr = 100
    windows = plan_windows(20.0, 8.0, 2.0)  # three windows, overlaps of 2 s
    audios = [np.full((2, 800), i + 1.0, np.float32) for i in range(len(windows))]
    out = stitch(audios, windows, sr, crossfade_s=0.5)
    assert out.shape == (2, 2000)
    first_overlap_mid = int(round((windows[1].start_s + windows[0].end_s) / 2 * sr))
    assert np.all(out[:, : first_overlap_mid - 25] == 1.0)  # window 0 only, up to the 0.5 s crossfade
    assert np.all(out[:, first_overlap_mid + 25 : first_overlap_mid + 100] == 2.0)
    single = stitch([np.arange(50, dtype=np.float32)], [Window(0.0, 0.5)], sr)
    np.testing.assert_array_equal(single, np.arange(50))


# -- audio ------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec,suffix", [("aac", ".m4a"), ("flac", ".flac"), ("opus", ".opus"), ("aac", ".mkv")])
def test_audio_round_trip(tmp_path, codec, suffix):
    sr = 16000
    t = np.arange(int(1.5 * sr)) / sr
    tone = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = encode_audio_file(tone, sr, tmp_path / f"tone{suffix}", codec=codec)
    back = read_audio(path, sr)
    assert back.dtype == np.float32 and back.ndim == 1
    assert abs(len(back) - len(tone)) <= sr // 25  # within one 25 fps video frame
    n = min(len(back), len(tone))
    corr = np.corrcoef(back[:n], tone[:n])[0, 1]
    assert corr > (0.999 if codec == "flac" else 0.95), f"{codec}: correlation {corr}"
    assert not list(tmp_path.glob(".*partial*"))


def test_read_audio_stereo_and_resample(tmp_path):
    sr = 48000
    t = np.arange(sr) / sr
    stereo = np.stack([np.sin(2 * np.pi * 1000 * t), np.zeros_like(t)]).astype(np.float32) * 0.5
    path = encode_audio_file(stereo, sr, tmp_path / "stereo.flac", codec="flac")
    both = read_audio(path, None, mono=False)
    assert both.shape == (2, sr)
    # FLAC is lossless on 16-bit samples: the silent channel stays silent (no crosstalk), 1e-3 = 33 steps
    assert np.abs(both[1]).max() < 1e-3 and np.abs(both[0]).max() > 0.45
    mono16 = read_audio(path, 16000)
    assert mono16.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(mono16))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins: the tone stays at 1 kHz
    assert resample(np.ones(480, np.float32), 48000, 16000).shape == (160,)


def test_encode_audio_rejects_mismatched_extension(tmp_path):
    with pytest.raises(ValueError, match="opus"):
        encode_audio_file(np.zeros(100, np.float32), 16000, tmp_path / "x.flac", codec="opus")


def test_seeking_window_matches_a_full_decode(tmp_path):
    # moving picture, B-frames (x264 veryfast) and a key frame every 10 frames: the window
    # decode seeks to 1.2 s and must give exactly the frames a decode from 0 gives
    clip = make_video(tmp_path / "moving.mp4", seconds=4.0, fps=25, size=(320, 180), gop=10)
    targets = [FrameTarget(8.0, 64, "resize"), FrameTarget(25.0, 48, "crop")]
    full = decode_window(clip.path, 0.0, 4.0, targets)
    part = decode_window(clip.path, 2.0, 2.0, targets)
    assert part.duration_s == pytest.approx(2.0)
    # the same decoder and resizer on the same decoded pictures: bit-identical
    np.testing.assert_array_equal(part.frames[0], full.frames[0][16:32])
    np.testing.assert_array_equal(part.frames[1], full.frames[1][50:100])
    assert not np.array_equal(part.frames[1][0], part.frames[1][-1])  # the picture moves
