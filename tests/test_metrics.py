"""Metrics for `dub report`: Fréchet distance, onsets, AV-Align, classifier scores, PANNs CNN14,
weights lookup, PNG pictures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from dub.workflows.metrics.av_align import av_align_iou, av_align_score, motion_peaks
from dub.workflows.metrics.classifiers import inception_score, kl_softmax, softmax
from dub.workflows.metrics.desync import build_offset_predictor, desync_score, desync_windows
from dub.workflows.metrics.embeddings import BackendUnavailable, LogMelStatsBackend, PannsBackend, build_backend
from dub.workflows.metrics.fad import frechet_distance, frechet_distance_from_stats, gaussian_stats
from dub.workflows.metrics.media_io import read_audio, read_grey_frames
from dub.workflows.metrics.models.panns import Cnn14, Cnn14Config, LogMelFrontEnd, load_cnn14
from dub.workflows.metrics.onsets import OnsetConfig, average_precision, detect_onsets, onset_prf, score_onsets
from dub.workflows.metrics.plots import encode_png, spectrogram_png, waveform_png
from dub.workflows.metrics.weights import MissingWeights, WeightsLocator
from tests.report_helpers import FPS, SAMPLE_RATE, burst_audio, decode_png, event_frames, write_clip

# ----------------------------------------------------------------------------- Fréchet distance


def exact_samples(rng: np.random.Generator, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """n samples whose sample mean and covariance (ddof=1) are exactly `mean` and `cov`."""
    d = len(mean)
    z = rng.standard_normal((n, d))
    z -= z.mean(axis=0)
    white = np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False, ddof=1)))
    z = np.linalg.solve(white, z.T).T  # identity sample covariance
    return z @ np.linalg.cholesky(cov).T + mean


def random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


@pytest.mark.parametrize("method", ["eig", "svd"])
def test_frechet_matches_closed_form_for_commuting_gaussians(method):
    rng = np.random.default_rng(0)
    d = 8
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    eig_a, eig_b = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    cov_a, cov_b = basis @ np.diag(eig_a) @ basis.T, basis @ np.diag(eig_b) @ basis.T
    a, b = exact_samples(rng, 200, mu_a, cov_a), exact_samples(rng, 150, mu_b, cov_b)
    # shared eigenbasis: Tr sqrt(S_a S_b) = sum sqrt(eig_a * eig_b)
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(eig_a) - np.sqrt(eig_b)) ** 2)
    # exact_samples reproduce mu and cov exactly, so only float64 rounding remains: an 8 x 8
    # eigenproblem with condition ~15, ~d kappa u64 ~ 1e-14 relative; 1e-9 leaves room
    assert frechet_distance(a, b, method=method) == pytest.approx(expected, rel=1e-9)


def test_frechet_matches_independent_sqrtm_for_general_gaussians():
    rng = np.random.default_rng(1)
    d = 6
    mu_a, mu_b = rng.standard_normal(d), rng.standard_normal(d)
    cov_a, cov_b = random_spd(rng, d), random_spd(rng, d)
    a, b = exact_samples(rng, 300, mu_a, cov_a), exact_samples(rng, 300, mu_b, cov_b)
    root_b = scipy.linalg.sqrtm(cov_b)
    cross = scipy.linalg.sqrtm(root_b @ cov_a @ root_b).real  # symmetric form, well conditioned here
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(cross)
    # scipy's Schur sqrtm against our eigen/SVD routes, float64: kappa(sqrtm) u64 with kappa of
    # random SPD 6 x 6 matrices in the hundreds, and the trace's cancellation: rel 1e-8
    assert frechet_distance(a, b, method="eig") == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(a, b, method="svd") == pytest.approx(expected, rel=1e-8)
    assert frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-8)


def test_frechet_one_dimensional_closed_form():
    rng = np.random.default_rng(2)
    a = exact_samples(rng, 50, np.array([1.0]), np.array([[4.0]]))
    b = exact_samples(rng, 70, np.array([-2.0]), np.array([[0.25]]))
    assert frechet_distance(a, b) == pytest.approx(9.0 + (2.0 - 0.5) ** 2, rel=1e-10)  # float64 scalars


@pytest.mark.parametrize("n,d", [(100, 16), (12, 300)])
def test_frechet_identical_sets_are_zero_and_distance_is_symmetric(n, d):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((n, d)) * rng.uniform(0.1, 5.0, d)
    b = rng.standard_normal((n + 5, d)) + 0.3
    # Tr S - 2 Tr sqrt(S S) + Tr S cancels to 0; with n < d, eigenvalues at rounding level
    # (u64 lambda_max) have square roots of sqrt(u64) ~ 1e-8 of lambda: 1e-8 of the trace
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8 * np.trace(np.cov(a, rowvar=False)))
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-10)
    assert frechet_distance(a, b) > 0.0


def test_frechet_stable_with_fewer_samples_than_dimensions():
    rng = np.random.default_rng(4)
    d = 512
    a = rng.standard_normal((20, d)).astype(np.float32)
    b = (rng.standard_normal((30, d)) * 1.5 + 0.2).astype(np.float32)
    by_svd = frechet_distance(a, b, method="svd")
    by_eig = frechet_distance(a, b, method="eig")  # rank-deficient D x D covariances
    assert np.isfinite(by_svd) and by_svd > 0
    # the D x D eigen route carries ~D rounding-level eigenvalues whose square roots (sqrt(u64)
    # of the scale each) the n x n SVD route never forms: measured 2.5e-8 relative
    assert by_eig == pytest.approx(by_svd, rel=1e-6)
    # the mean and trace terms are known exactly; the cross term lies between 0 and their bound
    mu_term = np.sum((a.mean(0, dtype=np.float64) - b.mean(0, dtype=np.float64)) ** 2)
    traces = np.trace(np.cov(a.T.astype(np.float64))) + np.trace(np.cov(b.T.astype(np.float64)))
    assert mu_term <= by_svd <= mu_term + traces


def test_frechet_rejects_bad_input():
    good = np.zeros((4, 3))
    with pytest.raises(ValueError, match="2-D"):
        frechet_distance(np.zeros(3), good)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), good)
    with pytest.raises(ValueError, match="sizes differ"):
        frechet_distance(np.ones((4, 2)), good)
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((4, 3), np.nan), good)
    mu, cov = gaussian_stats(np.random.default_rng(0).standard_normal((10, 3)))
    assert mu.shape == (3,) and cov.shape == (3, 3)


# ----------------------------------------------------------------------------- onsets

EVENTS = np.array([0.5, 1.27, 2.1, 3.03, 3.9, 4.81, 5.6, 6.45, 7.2])


@pytest.fixture(scope="module")
def burst_clip() -> np.ndarray:
    return burst_audio(EVENTS, 8.0, seed=0)


def test_detected_onsets_match_the_constructed_bursts(burst_clip):
    detection = detect_onsets(burst_clip, SAMPLE_RATE)
    assert len(detection.times_s) == len(EVENTS)
    error = detection.times_s - EVENTS
    assert np.all(np.abs(error) < 0.035), error  # frame hop is 23 ms at 22.05 kHz


@pytest.mark.parametrize(
    "shift,acc_03,acc_01,f1_50ms", [(0.0, 1.0, 1.0, 1.0), (0.03, 1.0, 1.0, 1.0), (0.2, 1.0, 0.0, 0.0)]
)
def test_onset_scores_for_exact_and_shifted_references(burst_clip, shift, acc_03, acc_01, f1_50ms):
    reference = EVENTS + shift
    default = score_onsets(burst_clip, SAMPLE_RATE, reference)  # MMAudio's +-0.3 s tolerance
    assert default.acc == acc_03
    assert default.ap == 1.0  # every detection is matched: nothing ranks a false positive
    assert default.f1 == f1_50ms and default.precision == f1_50ms and default.recall == f1_50ms
    strict = score_onsets(burst_clip, SAMPLE_RATE, reference, OnsetConfig(tolerance_s=0.1))
    assert strict.acc == acc_01
    if acc_01 == 0.0:  # all references missed (score 0), all detections unmatched
        n = len(EVENTS)
        # scores are ratios of counts: pytest.approx (rel 1e-6) only absorbs float64 division, here and below
        assert strict.ap == pytest.approx(n / (2 * n))


def test_onset_scores_with_missing_and_extra_references(burst_clip):
    reference = np.r_[EVENTS[::2], 7.7]  # every other event, plus one silent moment
    scores = score_onsets(burst_clip, SAMPLE_RATE, reference)
    n_ref, n_det = len(reference), len(EVENTS)
    assert scores.acc == pytest.approx((n_ref - 1) / n_ref)
    assert scores.precision == pytest.approx((n_ref - 1) / n_det)
    assert scores.recall == pytest.approx((n_ref - 1) / n_ref)
    assert 0.0 < scores.ap < 1.0


def test_onset_scores_undefined_without_reference(burst_clip):
    scores = score_onsets(burst_clip, SAMPLE_RATE, np.array([]))
    assert np.isnan(scores.acc) and np.isnan(scores.ap) and np.isnan(scores.recall)


def test_average_precision_matches_rank_definition():
    rng = np.random.default_rng(5)
    for _ in range(20):
        y = rng.integers(0, 2, 30)
        y[0] = 1
        s = rng.permutation(30).astype(float)  # distinct scores
        order = np.argsort(-s)
        hits = np.cumsum(y[order])
        expected = np.mean([hits[k] / (k + 1) for k in range(30) if y[order][k] == 1])
        assert average_precision(y, s) == pytest.approx(expected)
    assert average_precision(np.array([1, 0, 1]), np.array([0.0, 0.0, 0.0])) == pytest.approx(2 / 3)
    assert np.isnan(average_precision(np.zeros(3), np.ones(3)))


def test_onset_prf_one_to_one_matching():
    p, r, f = onset_prf(np.array([1.0, 1.02, 2.0]), np.array([1.01, 3.0]), window_s=0.05)
    assert (p, r) == (pytest.approx(1 / 3), pytest.approx(1 / 2))  # 1.02 cannot reuse 1.01
    assert f == pytest.approx(2 * 1 / (3 + 2))
    assert np.isnan(onset_prf(np.array([]), np.array([]))[2])


def test_onset_prf_matches_a_maximum_bipartite_matching():
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(8)
    for _ in range(50):
        det, ref = np.sort(rng.uniform(0, 1, rng.integers(1, 12))), np.sort(rng.uniform(0, 1, rng.integers(1, 12)))
        allowed = np.abs(det[:, None] - ref[None, :]) <= 0.05
        rows, cols = linear_sum_assignment(-allowed.astype(float))
        best = int(allowed[rows, cols].sum())
        precision, recall, _ = onset_prf(det, ref, 0.05)
        assert round(precision * len(det)) == best and round(recall * len(ref)) == best


# ----------------------------------------------------------------------------- AV-Align


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("avalign")
    times_a = np.array([0.6, 1.5, 2.2, 3.4, 4.1, 5.3])
    times_b = np.array([0.9, 1.9, 2.7, 3.0, 4.6, 5.7])
    a = write_clip(root / "a.mp4", event_frames(times_a, 6.0, seed=1), burst_audio(times_a, 6.0, seed=1))
    b = write_clip(root / "b.mp4", event_frames(times_b, 6.0, seed=2), burst_audio(times_b, 6.0, seed=2))
    return a, b, times_a


def test_motion_peaks_find_the_visual_events(two_clips):
    path_a, _, times_a = two_clips
    video = read_grey_frames(path_a)
    assert video.fps == FPS and video.frames.shape[1:] == (64, 64)
    peaks = motion_peaks(video.frames, video.times_s, video.fps)
    assert np.allclose(peaks.times_s, np.round(times_a * FPS) / FPS)  # frame times, float64 arithmetic


def test_av_align_high_with_own_audio_low_with_another_clips(two_clips):
    path_a, path_b, _ = two_clips
    video = read_grey_frames(path_a)
    motion = motion_peaks(video.frames, video.times_s, video.fps)
    own, _ = av_align_score(read_audio(path_a, SAMPLE_RATE), SAMPLE_RATE, motion)
    other, _ = av_align_score(read_audio(path_b, SAMPLE_RATE), SAMPLE_RATE, motion)
    assert own >= 0.7
    assert other <= 0.2


def test_av_align_iou_definition():
    fps = 25.0
    assert av_align_iou([1.0, 2.0], [1.01, 2.0], fps) == 1.0
    assert av_align_iou([1.0, 3.0], [1.01, 2.0], fps) == pytest.approx(1 / 3)
    assert av_align_iou([1.0], [1.05], fps) == 0.0  # more than one frame (40 ms) apart
    assert np.isnan(av_align_iou([], [], fps))


# ----------------------------------------------------------------------------- classifier scores


def test_kl_softmax_and_inception_score():
    rng = np.random.default_rng(6)
    logits = rng.standard_normal((5, 7))
    assert np.allclose(kl_softmax(logits, logits), 0.0, atol=1e-9)  # p (log p - log p): 0 in float64
    other = rng.standard_normal((5, 7))
    p, q = softmax(other), softmax(logits)
    expected = np.sum(p * (np.log(p) - np.log(q)), axis=1)
    assert np.allclose(kl_softmax(logits, other), expected, rtol=1e-10)  # float64, another grouping of 7 terms
    assert np.all(kl_softmax(logits, other) > 0)
    confident = np.full((40, 4), -20.0)
    confident[np.arange(40), np.arange(40) % 4] = 20.0  # each class equally often, certain
    mean, std = inception_score(confident, splits=1)
    # exactly 4 but for the 1e-6 the implementation adds inside its logs (3e-6 relative here)
    assert mean == pytest.approx(4.0, rel=1e-3) and std == 0.0
    mean, std = inception_score(confident, splits=4)  # shuffled splits are not exactly balanced
    assert 1.0 < mean <= 4.0 + 1e-6 and std > 0
    assert inception_score(np.zeros((10, 4)), splits=2)[0] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- PANNs CNN14

TINY = Cnn14Config(mel_bins=32, classes_num=5, channels=(4, 4, 8, 8, 8, 16))


def test_cnn14_key_names_and_shapes_match_the_released_checkpoint():
    with torch.device("meta"):
        model = Cnn14()
    state = model.state_dict()
    expected = {
        "spectrogram_extractor.stft.conv_real.weight": (257, 1, 512),
        "spectrogram_extractor.stft.conv_imag.weight": (257, 1, 512),
        "logmel_extractor.melW": (257, 64),
        "fc1.weight": (2048, 2048),
        "fc1.bias": (2048,),
        "fc_audioset.weight": (527, 2048),
        "fc_audioset.bias": (527,),
    }
    for bn in ("bn0",) + tuple(f"conv_block{i}.bn{j}" for i in range(1, 7) for j in (1, 2)):
        for leaf in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            expected.setdefault(f"{bn}.{leaf}", None)
    channels = (1, 64, 128, 256, 512, 1024, 2048)
    for i in range(1, 7):
        expected[f"conv_block{i}.conv1.weight"] = (channels[i], channels[i - 1], 3, 3)
        expected[f"conv_block{i}.conv2.weight"] = (channels[i], channels[i], 3, 3)
    assert set(state) == set(expected)
    for key, shape in expected.items():
        if shape is not None:
            assert tuple(state[key].shape) == shape, key


def test_cnn14_tiny_forward_and_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = Cnn14(TINY).eval()
    for module in model.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
    wav = torch.randn(2, 16000, generator=torch.Generator().manual_seed(1)) * 0.1
    with torch.no_grad():
        emb, logits = model(wav)
    assert emb.shape == (2, 16) and logits.shape == (2, 5) and torch.all(emb >= 0)
    torch.save({"model": model.state_dict(), "iteration": 0}, tmp_path / "tiny.pth")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "tiny.safetensors"))
    for name in ("tiny.pth", "tiny.safetensors"):
        loaded = load_cnn14(tmp_path / name, TINY)
        with torch.no_grad():
            emb2, logits2 = loaded(wav)
        assert torch.equal(emb, emb2) and torch.equal(logits, logits2)  # same bits loaded, same code
    with pytest.raises(ValueError, match="does not match the CNN14"):
        load_cnn14(tmp_path / "tiny.pth")  # the full-size config


def test_cnn14_conv_front_end_equals_stft_front_end():
    model = Cnn14(TINY)
    wav = torch.randn(1, 12000, generator=torch.Generator().manual_seed(2)) * 0.2
    with torch.no_grad():
        conv = model.logmel_extractor(model.spectrogram_extractor(wav))[:, 0]
        fast = LogMelFrontEnd(TINY)(wav)
    assert conv.shape == fast.shape == (1, 1 + 12000 // 160, 32)
    # dB; float32 conv vs FFT round-off at quiet bins: the DFT's normwise rounding is large
    # relative to a quiet bin, and 10 log10 turns a relative error e into 4.34 e dB
    assert torch.allclose(conv, fast, atol=1e-2)


def test_panns_backend_gives_embeddings_and_logits(tmp_path, burst_clip):
    torch.manual_seed(0)
    torch.save({"model": Cnn14(TINY).state_dict()}, tmp_path / "tiny.pth")
    backend = PannsBackend(tmp_path / "tiny.pth", config=TINY)
    feats = backend.features([burst_clip, burst_clip[:4000]])  # a clip under 1 s is zero-padded
    assert backend.info.comparable
    assert feats.embeddings.shape == (2, 16) and feats.logits.shape == (2, 5)


def test_desync_windows_follow_av_benchmark():
    assert desync_windows(8.0) == [(0.0, 4.8), (pytest.approx(3.2), 8.0)]
    assert desync_windows(4.0) == []  # under 14 segments: the sync head cannot score the clip
    assert desync_score([-0.4, 0.2]) == pytest.approx(0.3)


def test_logmel_backend_is_labelled_not_comparable(burst_clip):
    backend = LogMelStatsBackend()
    assert not backend.info.comparable and "not comparable" in backend.info.note
    feats = backend.features([burst_clip, burst_clip[:SAMPLE_RATE]])
    assert feats.embeddings.shape == (2, 128) and feats.logits is None
    assert np.all(np.isfinite(feats.embeddings))


# ----------------------------------------------------------------------------- weights


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(BackendUnavailable, match=r"Cnn14_16k_mAP=0\.438\.pth"):
        build_backend("panns", WeightsLocator(tmp_path))
    with pytest.raises(BackendUnavailable, match=r"vggish-10086976\.pth"):
        build_backend("vggish", WeightsLocator(tmp_path))
    with pytest.raises(BackendUnavailable, match=r"passt-s-f128-p16-s10-ap\.476-swa\.pt"):
        build_backend("passt", WeightsLocator(tmp_path))
    with pytest.raises(MissingWeights, match="synchformer_state_dict.pth"):
        WeightsLocator(tmp_path).path("synchformer")
    with pytest.raises(BackendUnavailable, match="synchformer_state_dict.pth"):
        build_offset_predictor(WeightsLocator(tmp_path))
    (tmp_path / "mmaudio-ext").mkdir()
    (tmp_path / "mmaudio-ext" / "synchformer_state_dict.pth").write_bytes(b"")
    assert WeightsLocator(tmp_path).path("synchformer").name == "synchformer_state_dict.pth"
    with pytest.raises(BackendUnavailable, match="found, but it cannot be used for DeSync"):
        build_offset_predictor(WeightsLocator(tmp_path))
    with pytest.raises(ValueError, match="unknown embedding backend"):
        build_backend("nope", WeightsLocator(tmp_path))


# ----------------------------------------------------------------------------- pictures


def test_png_encoder_round_trips_through_ffmpeg():
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(rgb)), rgb)  # PNG is lossless: bit-identical
    palette = rng.integers(0, 256, (10, 3), dtype=np.uint8)
    idx = rng.integers(0, 10, (9, 31), dtype=np.uint8)
    assert np.array_equal(decode_png(encode_png(idx, palette)), palette[idx])
    with pytest.raises(ValueError, match="out of range"):
        encode_png(np.full((2, 2), 12, dtype=np.uint8), palette)


def test_waveform_and_spectrogram_pictures_show_the_events(burst_clip):
    wave = decode_png(waveform_png(burst_clip, SAMPLE_RATE, 8.0, events_s=EVENTS, width=400, height=60))
    spec = decode_png(spectrogram_png(burst_clip, SAMPLE_RATE, 8.0, events_s=EVENTS, width=400, height=64))
    assert wave.shape == (60, 400, 3) and spec.shape == (64, 400, 3)
    red = np.all(wave == (220, 40, 40), axis=2).any(axis=0)
    assert set(np.nonzero(red)[0]) == {int(t / 8.0 * 400) for t in EVENTS}
    energy = spec[:48].astype(float).mean(axis=(0, 2))  # above the event marks
    at_events = energy[[int(t / 8.0 * 400) + 1 for t in EVENTS]].mean()
    between = energy[[int((t + 0.35) / 8.0 * 400) for t in EVENTS[:-1]]].mean()
    assert at_events > between + 30  # bursts are brighter than the quiet floor
