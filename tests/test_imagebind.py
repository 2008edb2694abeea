"""IB-score (ImageBind, as av-benchmark): conformance with ImageBind's own code on a tiny random
model, the released checkpoint's key layout, strict loading, av-benchmark's frame selection on a
real video, and the metric inside `dub report`.

The fixture in tests/data/imagebind_fixture was made by ImageBind's code (imagebind-packaged 0.1.2:
`ImageBindModel`, data.py's `waveform2melspec` / `SpatialCrop`, pytorchvideo's clip sampler) and
torchvision's v2 transforms, exactly as av-benchmark calls them (make_fixture.py there).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dub.workflows.metrics.embeddings import BackendUnavailable
from dub.workflows.metrics.ib_score import (
    ImageBindScorer,
    audio_clip_bounds,
    audio_mel_clips,
    build_imagebind,
    frame_pairs,
    ib_frames,
    ib_score,
    video_input,
)
from dub.workflows.metrics.models.imagebind import (
    IGNORED_MODALITIES,
    IMAGEBIND_HUGE,
    IMAGEBIND_TINY,
    ImageBindConfig,
    checkpoint_shapes,
    imagebind_state_dict,
    load_imagebind,
)
from dub.workflows.metrics.weights import METRIC_WEIGHTS, WeightsLocator

FIXTURE = Path(__file__).parent / "data" / "imagebind_fixture"
U32 = 2.0**-24  # float32 unit roundoff
# Embeddings against ImageBind's (absolute; the vision ones are unit vectors, entries < 1): two
# float32 forwards of the tiny towers (width 16, MLP 64, 2 blocks: ~12 sequential layers of dot
# products of <= 64 terms) computed by different code. Independent roundings grow like sqrt(n)
# per dot product: ~sqrt(64) u per layer, ~100u = 6e-6 over the tower; 1e-5 (~170u) leaves room.
# Measured: 2e-7. (The mel has its own bound, `fbank_tolerance`.)
TOL = 1e-5


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIXTURE / "fixture.json").read_text())


@pytest.fixture(scope="module")
def io() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "io.safetensors"))


@pytest.fixture(scope="module")
def tiny(meta):
    assert (
        ImageBindConfig(
            vision_width=meta["tiny_config"]["vision_embed_dim"],
            vision_depth=meta["tiny_config"]["vision_num_blocks"],
            vision_heads=meta["tiny_config"]["vision_num_heads"],
            audio_width=meta["tiny_config"]["audio_embed_dim"],
            audio_depth=meta["tiny_config"]["audio_num_blocks"],
            audio_heads=meta["tiny_config"]["audio_num_heads"],
            out_dim=meta["tiny_config"]["out_embed_dim"],
        )
        == IMAGEBIND_TINY
    )
    return load_imagebind(FIXTURE / "weights.safetensors", IMAGEBIND_TINY)


def reference_resized(frames_u8: torch.Tensor) -> np.ndarray:
    """torchvision's v2.Resize(224, bicubic) on the (T, H, W, 3) frames, as av-benchmark resizes."""
    from torchvision.transforms import v2

    chunk = frames_u8.permute(0, 3, 1, 2)
    resized = v2.Resize(224, interpolation=v2.InterpolationMode.BICUBIC)(chunk)
    return resized.permute(0, 2, 3, 1).numpy()


def err(a, b) -> float:
    """max |a - b|: an absolute error (the values compared are of order 1)."""
    return float((torch.as_tensor(np.asarray(a)) - torch.as_tensor(np.asarray(b))).abs().max())


def fbank_tolerance(wav: np.ndarray, reference_sub: torch.Tensor) -> torch.Tensor:
    """Per element, how far two float32 computations of ImageBind's normalised log-mel may fall
    apart (the reference's, torchaudio 2.11.0's kaldi fbank, and ours, any torchaudio): twice
    the first-order rounding bound b of one of them against exact arithmetic, for the
    (::2, ::2) sub-sampled (3, 1, 64, 102) reference.

    For each 25 ms frame (400 samples, zero-padded to n = 512), with u = 2^-24:
    * DC removal, pre-emphasis (x - 0.97 x[-1]) and the Hann window round each sample by at most
      4u relative to the samples before pre-emphasis, whose norm bounds the pre-emphasised one
      within 1.97 = 1 + 0.97;
    * the radix-2 FFT errs normwise by at most log2(n) eta ||X|| with eta = mu + gamma_4 (sqrt 2
      + mu) ~ (1 + 4 sqrt 2) u ~ 6.7u (Higham, Accuracy and Stability of Numerical Algorithms,
      thm 24.2, twiddles accurate to mu ~ u): 9 x 6.7u ~ 60u; 64u with the time-domain steps;
    * a mel band's energy E = sum_k w_k |X_k|^2 (0 <= w_k <= 1) then moves by at most
      2 sqrt(E) ||dX|| (Cauchy-Schwarz), with ||X||^2 <= 2 P for the one-sided power P: a
      relative error 2 sqrt(2) 1.97 x 64u sqrt(P0 / E), P0 the frame's power before
      pre-emphasis. The FFT's error is spread over the whole spectrum, so a band far below its
      frame's power (sqrt(P0 / E) up to ~4e4 in this fixture, the bands at kaldi's floor)
      gets a large relative error, a loud band a tiny one: a single number cannot be both
      faithful and tight, hence a tolerance per element;
    * |X|, its square and the mel sum of at most 10 non-zero positive terms: (10 + 3)u relative;
    * log: d(log E) = dE / E, plus one ulp of |log E| < 16 (2^-20); kaldi's floor
      max(E, eps_32) is 1-Lipschitz in log E, so E is taken as max(eps_32, E_ref);
    * (y + 4.268) / 9.138: the error above divided by MEL_STD 9.138, plus two roundings of a
      result < 2 (about 2.6u; the float32 constants are the same in both).
    Padded frames are exact zeros in both (only the normalisation rounds). So `err` (an absolute
    error of the normalised log) is the band's relative energy error / 9.138, and that is not
    "u times a few terms" but the FFT's normwise error over the band's share of its frame: the
    median bound here is 4e-5 to 2e-4, 1e-6 for the loudest bands. It is a worst case: the
    reference's own rounding (the fixture against a float64 run of the same fbank) uses at most
    1/12 of b, torchaudio 2.11.1 against 2.11.0 differs by up to 1.7e-5. What the fixture pins
    still shows: removing each clip's mean from a copy instead of in place exceeds the bound
    200-fold, a Hamming window instead of Hann 1000-fold.
    """
    import torchaudio

    from dub.workflows.metrics import ib_score as ib

    x = torch.as_tensor(np.asarray(wav, dtype=np.float64)).reshape(1, -1).clone()
    powers = []
    for a, b in ib.audio_clip_bounds(x.shape[1]):
        view = x[:, a:b]
        view -= view.mean()  # in place, as the reference
        log_power = torchaudio.compliance.kaldi.spectrogram(
            view,
            sample_frequency=ib.SAMPLE_RATE,
            window_type="hanning",
            dither=0.0,
            frame_length=25,
            frame_shift=10,
            preemphasis_coefficient=0.0,
        )  # (frames, 257), float64
        p0 = log_power.exp().sum(1)[: ib.MEL_FRAMES]
        powers.append(torch.nn.functional.pad(p0, (0, ib.MEL_FRAMES - p0.shape[0])))
    p0 = torch.stack(powers)[:, None, None, ::2]  # (3, 1, 1, 102): one power per frame
    energy = (reference_sub.double() * ib.MEL_STD + ib.MEL_MEAN).exp().clamp_min(torch.finfo(torch.float32).eps)
    relative = 2 * 2**0.5 * 1.97 * 64 * U32 * (p0 / energy).sqrt() + 13 * U32
    one = (relative + 2.0**-20) / ib.MEL_STD + 2.6 * U32
    return 2 * one


# ----------------------------------------------------------------------------- conformance


@pytest.mark.conformance
def test_audio_preprocessing_matches_imagebind(meta, io):
    """Clip sampling (2 s x 3 over the whole audio, exact fractions), the in-place mean removal on
    overlapping clips, kaldi fbank 128 x 204 and the normalisation: the reference's numbers."""
    for name in ("a", "b"):
        wav = io[f"wav_{name}"].numpy()
        points = meta["clip_timepoints"][f"wav_{name}"]
        assert audio_clip_bounds(len(wav)) == [(int(s * 16000), int(e * 16000)) for s, e in points]
        mel = audio_mel_clips(wav)
        assert mel.shape == (3, 1, 128, 204)
        ref = io[f"mel_{name}_sub"]
        ratio = (mel[..., ::2, ::2].double() - ref.double()).abs() / fbank_tolerance(wav, ref)
        assert ratio.max() <= 1, f"wav_{name}: |ours - reference| reaches {float(ratio.max()):.3g} x its bound"
    # wav_a's clips overlap: removing each clip's mean from a copy (not in place) gives other numbers
    from dub.workflows.metrics import ib_score as ib

    wav = io["wav_a"].numpy()
    (a0, b0), (a1, b1) = audio_clip_bounds(len(wav))[:2]
    independent = wav[a1:b1] - wav[a1:b1].mean()
    in_place = wav.copy()
    in_place[a0:b0] -= in_place[a0:b0].mean()
    in_place = in_place[a1:b1] - in_place[a1:b1].mean()
    assert np.abs(independent - in_place).max() > 1e-4  # the quirk matters, and the fixture pins it
    assert ib.MEL_MEAN == -4.268 and ib.MEL_STD == 9.138


@pytest.mark.conformance
def test_video_preprocessing_matches_av_benchmark(meta, io):
    """Short side to 224 (torchvision), CLIP normalisation, ImageBind's three crops."""
    resized = reference_resized(io["frames_u8"])
    # torchvision's uint8 resize on both sides: integer fixed-point arithmetic, exactly equal
    assert err(torch.from_numpy(resized).permute(0, 3, 1, 2)[..., ::4, ::4].int(), io["resized_u8_sub"].int()) == 0
    video = video_input(resized)
    assert list(video.shape) == meta["video_input_shape"]
    # per pixel (x / 255 - mean) / std: at most 3 float32 roundings each side of values < 2
    assert err(video[..., ::8, ::8], io["video_input_sub"]) <= 2 * 3 * U32 * 2.0
    # sums over all pixels, in float64, of those per-pixel differences (< 4e-7 relative)
    assert float(video.double().sum()) == pytest.approx(meta["video_input_stats"]["sum"], rel=1e-6)
    assert float(video.double().abs().sum()) == pytest.approx(meta["video_input_stats"]["abs_sum"], rel=1e-6)
    # dub's "exact" resize backend (float antialiased bicubic, rounded) is within one grey level of
    # torchvision's native uint8 kernel (fixed-point weights: rounding ties may fall either way)
    from dub.workflows.media.decode import _torch_resize

    frames = io["frames_u8"].numpy()
    ours = np.stack([_torch_resize(f, (resized.shape[2], resized.shape[1])) for f in frames])
    assert np.abs(ours.astype(int) - resized.astype(int)).max() <= 1


@pytest.mark.conformance
def test_embeddings_match_imagebind(tiny, io):
    """Vision: every frame-pair clip of every crop, then the mean of the unit vectors; audio: the
    mean of the three clip embeddings (norm 20 each, the logit-scale buffer)."""
    video = video_input(reference_resized(io["frames_u8"]))
    pairs = frame_pairs(video)
    assert pairs.shape == (6, 3, 2, 224, 224)
    with torch.inference_mode():
        per_clip = tiny.vision_clips(pairs)
        assert err(per_clip, io["vision_clip_embeddings"]) <= TOL
        assert err(tiny("vision", pairs[None]), io["vision_embedding"]) <= TOL
    scorer = ImageBindScorer(tiny)
    assert err(scorer.video_embedding(reference_resized(io["frames_u8"])), io["vision_embedding"][0]) <= TOL
    audio = np.stack([scorer.audio_embedding(io[f"wav_{n}"].numpy()) for n in ("a", "b")])
    # TOL scaled by the audio head's logit scale (norm 20). It also covers the mel's rounding:
    # the embedding of a float64 fbank's mel moves by 5e-6
    assert err(audio, io["audio_embedding"]) <= TOL * 20
    # wav_b: three identical clips, a unit vector times 20 (float32 norm of 24 terms: ~30u)
    assert np.linalg.norm(audio[1]) == pytest.approx(20.0, rel=1e-5)
    # the score is a cosine: the audio scale does not enter it. float64 both ways, 24-term dot
    # products: ~1e-15 apart
    score = ib_score(io["vision_embedding"].numpy(), io["audio_embedding"].numpy())
    v, a = io["vision_embedding"][0].double(), io["audio_embedding"].double()
    assert score == pytest.approx((a @ v / a.norm(dim=1) / v.norm()).numpy(), abs=1e-12)


# ----------------------------------------------------------------------------- loading


def test_fixture_weights_load_strictly_and_mismatches_are_named(tmp_path):
    state = load_file(str(FIXTURE / "weights.safetensors"))
    # the other modalities' keys, as the released file holds them, are ignored by name
    extra = {f"modality_trunks.{m}.blocks.0.norm_1.weight": torch.ones(8) for m in IGNORED_MODALITIES}
    extra["modality_preprocessors.text.token_embedding.weight"] = torch.ones(10, 8)
    torch.save({**state, **extra}, tmp_path / "imagebind_huge.pth")  # a pickle, read weights-only
    model = load_imagebind(tmp_path / "imagebind_huge.pth", IMAGEBIND_TINY)
    assert set(model.state_dict()) == set(state)

    missing = dict(state)
    del missing["modality_trunks.audio.blocks.1.attn.bias_k"]
    with pytest.raises(ValueError, match="bias_k"):
        load_imagebind(missing, IMAGEBIND_TINY)
    strange = {**state, "modality_heads.video.0.weight": torch.ones(16)}
    with pytest.raises(ValueError, match="not an ImageBind state dict"):
        load_imagebind(strange, IMAGEBIND_TINY)
    with pytest.raises(ValueError, match="shape"):  # the tiny weights against the huge model
        load_imagebind(FIXTURE / "weights.safetensors", IMAGEBIND_HUGE)
    no_scale = {k: v for k, v in state.items() if not k.endswith("log_logit_scale")}
    with pytest.raises(ValueError, match="log_logit_scale"):
        load_imagebind(no_scale, IMAGEBIND_TINY)


@pytest.mark.conformance
def test_released_layout_is_what_the_loader_expects(meta):
    """imagebind_huge's state dict (the reference constructor on the meta device, 1311 keys): our
    towers hold exactly its vision and audio keys and shapes, everything else is the four ignored
    modalities, and the key filter keeps exactly ours."""
    full = {k: tuple(v) for k, v in meta["full_checkpoint_shapes"].items()}
    ours = checkpoint_shapes(IMAGEBIND_HUGE)
    assert len(full) == 1311 and len(ours) == 569
    assert ours == {k: s for k, s in full.items() if k.split(".")[1] in ("vision", "audio")}
    assert {k.split(".")[1] for k in full if k not in ours} == set(IGNORED_MODALITIES)
    kept = imagebind_state_dict({k: torch.empty(s, device="meta") for k, s in full.items()})
    assert {k: tuple(v.shape) for k, v in kept.items()} == ours
    assert ours["modality_preprocessors.vision.rgbt_stem.proj.1.weight"] == (1280, 3, 2, 14, 14)
    assert ours["modality_preprocessors.audio.pos_embedding_helper.pos_embed"] == (1, 229, 768)
    assert set(meta["tiny_keys"]) == set(checkpoint_shapes(IMAGEBIND_TINY))


def test_registry_entry_and_missing_file(tmp_path):
    spec = METRIC_WEIGHTS["imagebind"]
    assert spec.file_name == "imagebind_huge.pth"
    from dub.model.weights.registry import KNOWN_FILES

    known = {(k.model, k.file): k for k in KNOWN_FILES}[(spec.model_name, spec.file_name)]
    assert known.url == "https://dl.fbaipublicfiles.com/imagebind/imagebind_huge.pth"
    with pytest.raises(BackendUnavailable, match="imagebind_huge.pth") as exc:
        build_imagebind(WeightsLocator(tmp_path))
    assert "dl.fbaipublicfiles.com" in str(exc.value) or "dub weights" in str(exc.value)


# ----------------------------------------------------------------------------- frames


def test_frames_are_those_ffmpegs_fps_filter_gives(tmp_path):
    """torio's 0.5 fps stream is ffmpeg's fps filter: output k is the last source frame before
    2k + 1 s (frames 24, 74, 124, 174 of a 25 fps clip, checked with PyAV's ffmpeg). Short side to
    224, aspect kept; a video shorter than the asked duration is refused as av-benchmark drops it."""
    from tests.video_factory import make_video, read_frame_index

    path = tmp_path / "index.mp4"
    make_video(path, seconds=8.0, fps=25.0, size=(96, 64), pattern="frame_index")
    frames = ib_frames(str(path), 8.0, backend="torch")
    assert frames.shape == (4, 224, 336, 3)
    assert [read_frame_index(f) for f in frames] == [i % 37 for i in (24, 74, 124, 174)]
    via_ffmpeg = _ffmpeg_fps_frames(path)
    assert [read_frame_index(f) for f in via_ffmpeg[:4]] == [read_frame_index(f) for f in frames]
    with pytest.raises(ValueError, match="needs 5"):
        ib_frames(str(path), 10.0)


def _ffmpeg_fps_frames(path: Path) -> list[np.ndarray]:
    """ffmpeg's own `fps=0.5` filter through PyAV: what torio's StreamingMediaDecoder runs."""
    import av

    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        graph = av.filter.Graph()
        src = graph.add_buffer(template=stream)
        fps = graph.add("fps", "0.5")
        sink = graph.add("buffersink")
        src.link_to(fps)
        fps.link_to(sink)
        graph.configure()

        def drain():
            while True:
                try:
                    frames.append(graph.pull().to_ndarray(format="rgb24"))
                except (av.error.BlockingIOError, av.error.EOFError):
                    return

        for frame in container.decode(stream):
            graph.push(frame)
            drain()
        graph.push(None)
        drain()
    return frames


# ----------------------------------------------------------------------------- dub report


def test_ib_score_in_run_report(tiny, tmp_path):
    """A real 8 s video and its generated audio get an ib_score (the tiny model's cosine of the
    reference-style forward of both towers); a 6 s video and a text-to-audio row get none, with
    the reason; --skip ib and missing weights are named in the summary."""
    from dub.workflows.metrics.media_io import read_audio
    from dub.workflows.report.config import Injected, ReportConfig
    from dub.workflows.report.run import run_report
    from tests.report_helpers import burst_audio, event_frames, write_clip, write_generate_run
    from tests.video_factory import make_video

    long_src = tmp_path / "videos" / "long.mp4"
    make_video(long_src, seconds=8.0, fps=25.0, size=(96, 64), pattern="moving_box")
    short_src = tmp_path / "videos" / "short.mp4"
    make_video(short_src, seconds=6.0, fps=25.0, size=(96, 64), pattern="moving_box")
    rows = []
    # g0's generated audio is 10 s: av-benchmark embeds the whole file, not the first 8 s
    for k, (src, seconds) in enumerate(((long_src, 10.0), (short_src, 6.0), (None, 8.0))):
        times = [1.0, 3.5]
        gen = write_clip(
            tmp_path / "run" / "mp4" / f"g{k}.mp4",
            event_frames(times, seconds, seed=k),
            burst_audio(times, seconds, seed=k),
        )
        rows.append({"video_id": f"g{k}", "path": src if src is not None else "prompt:a door slams", "output_mp4": gen})
    run = write_generate_run(tmp_path / "run", rows)
    scorer = ImageBindScorer(tiny, duration_s=8.0, decode_backend="torch")
    config = ReportConfig(
        run_dir=str(run),
        out_dir=str(tmp_path / "out"),
        backends=(),
        skip=("desync", "clap"),
        weights_dir=str(tmp_path / "none"),
        write_html=False,
        resize="exact",
    )
    result = run_report(config, injected=Injected(imagebind=scorer))
    long, short, t2a = result.rows

    frames = ib_frames(str(long_src), 8.0, backend="torch")
    pairs = frame_pairs(video_input(frames))
    wav = read_audio(rows[0]["output_mp4"], 16000)  # the whole generated file, as av-benchmark
    with torch.inference_mode():
        v = tiny("vision", pairs[None])[0]
        a = tiny("audio", audio_mel_clips(wav)[None])[0]
    expected = float(torch.nn.functional.cosine_similarity(v, a, dim=0))
    # the report batches the frame pairs and clips its own way: float32 towers in another
    # blocking, a cosine of order 1 (TOL's reasoning)
    assert long["ib_score"] == pytest.approx(expected, abs=TOL)
    assert -1.0 <= long["ib_score"] <= 1.0 and long["ib_reason"] is None and long["t_ib_s"] > 0
    assert short["ib_score"] is None and "needs 4" in short["ib_reason"]
    assert t2a["ib_score"] is None and "text-to-audio" in t2a["ib_reason"]
    metrics = result.summary["metrics"]
    # one clip: the mean is that clip's float (pytest.approx only absorbs float64 re-rounding)
    assert metrics["ib_score_mean"] == pytest.approx(long["ib_score"]) and metrics["ib_score_n"] == 1
    assert "ib_score" not in result.summary["unavailable"]
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out" / "report.parquet").to_pylist()
    assert table[0]["ib_score"] == pytest.approx(long["ib_score"]) and "text-to-audio" in table[2]["ib_reason"]

    skipped = run_report(
        ReportConfig(
            run_dir=str(run),
            out_dir=str(tmp_path / "out2"),
            backends=(),
            skip=("desync", "clap", "ib"),
            weights_dir=str(tmp_path / "none"),
            write_html=False,
        ),
        injected=Injected(imagebind=scorer),
    )
    assert skipped.rows[0]["ib_score"] is None
    assert skipped.summary["unavailable"]["ib_score"] == "left out (--skip ib)"
    missing = run_report(
        ReportConfig(
            run_dir=str(run),
            out_dir=str(tmp_path / "out3"),
            backends=(),
            skip=("desync", "clap"),
            weights_dir=str(tmp_path / "none"),
            write_html=False,
        )
    )
    assert "imagebind_huge.pth" in missing.summary["unavailable"]["ib_score"]
    assert missing.rows[0]["ib_score"] is None and missing.rows[0]["av_align"] is not None
