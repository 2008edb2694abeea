"""`dub bench` encoders/generate/e2e on the CPU (tiny sizes) and the fast inference path of
model/runtime/fast.py against the eager Generator on frames decoded from a bundled sample video."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dub.cli import app
from dub.model.codec.bigvgan import BigVGAN, BigVGANConfig
from dub.model.codec.mel import MelConfig, MelConverter
from dub.model.codec.mmaudio import MMAudioCodec
from dub.model.codec.vae import VAE, VAEConfig
from dub.model.demo import DemoCodec, DemoEncoders
from dub.model.kernels.graphs import CudaGraphCall
from dub.model.runtime.bundles import bundle_info
from dub.model.runtime.fast import OneStepGraph
from dub.model.runtime.generator import Generator, SamplerConfig, WindowBatch, noise_for_seeds
from dub.workflows.bench.generate import build_network
from dub.workflows.media.decode import FrameTarget, decode_window

SAMPLE = Path(__file__).resolve().parents[1] / "dub" / "samples" / "green_gem_bounce.mp4"
ROW_FIELDS = {
    "bench",
    "stage",
    "median_ms",
    "batch_size",
    "dtype",
    "device",
    "audio_s",
    "peak_mem_mb",
    "note",
    "rtf",
    "clips_per_s",
}


@pytest.fixture(autouse=True)
def one_thread():
    # 2 shared cores: one torch thread avoids OpenMP oversubscription stalls next to Ray workers
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_bench_cli_json_rows(ray_session):
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "encoders",
            "generate",
            "e2e",
            "--device",
            "cpu",
            "--preset",
            "tiny",
            "--repeats",
            "1",
            "--duration",
            "2",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = report["rows"]
    assert report["device"].startswith("cpu")
    assert {r["bench"] for r in rows} == {"encoders", "generate", "e2e"}
    problems = [f"{r['bench']}/{r['stage']}: {r['note']}" for r in rows if r["note"].startswith(("ERROR", "not run"))]
    assert not problems, problems
    for r in rows:
        assert set(r) == ROW_FIELDS, r
        assert r["median_ms"] > 0 and r["batch_size"] >= 1 and r["device"] == "cpu", r
        # rates derived from the row's own median in float64: approx only absorbs the last bits
        assert r["clips_per_s"] == pytest.approx(r["batch_size"] * 1000.0 / r["median_ms"])
        assert r["audio_s"] == pytest.approx(r["batch_size"] * 2.0)
        assert r["rtf"] == pytest.approx(r["median_ms"] / 1000.0 / r["audio_s"])
    stages = {(r["bench"], r["stage"]): r for r in rows}
    for stage in (
        "network 1 step + CFG, fast path (eager on cpu)",
        "network + VAE + vocoder, fast path (eager on cpu)",
        "vocoder (BigVGAN)",
        "vocoder (BigVGAN), activations as grouped convs",
    ):
        # the fast path's output was compared with the eager one before timing
        assert "within 0.02" in stages[("generate", stage)]["note"]
    assert ("generate", "network 25 Euler steps + CFG, eager (baseline)") in stages
    assert ("encoders", "Synchformer, 5 segments") in stages  # 2 s at 25 fps: (50 - 16) // 8 + 1
    ray_run = stages[("e2e", "ray: run_generate end to end (decode tasks + model actor + mp4 remux)")]
    assert ray_run["batch_size"] == 2 and "2 done, 0 failed" in ray_run["note"]
    assert ("e2e", "ray: decode window at both rates (CPU task, PyAV)") in stages
    total = stages[("e2e", "model-side: total per batch (pre-decoded frames, no video decode)")]
    resize = stages[("e2e", "model-side: resize on device (CLIP 384, Synchformer 224 crop)")]
    # dub generate's replica: the total without the resize its decode tasks already did (no upload on the CPU)
    replica = stages[("e2e", "model-side: as dub generate's replica (total - resize on device + pageable upload)")]
    assert replica["median_ms"] == pytest.approx(total["median_ms"] - resize["median_ms"])
    assert replica["note"].startswith(f"{total['median_ms']:.1f} - {resize['median_ms']:.1f} + 0.0 ms")


def _sample_batch(seconds: float, prompts: list[str], negatives: list[str]) -> WindowBatch:
    """The same real decoded clip twice (CLIP 8 fps 384 px, Synchformer 25 fps 224 crop)."""
    decoded = decode_window(SAMPLE, 0.0, seconds, [FrameTarget(8, 384, "resize"), FrameTarget(25, 224, "crop")])
    clip, sync = (torch.from_numpy(f).unsqueeze(0).repeat(len(prompts), 1, 1, 1, 1) for f in decoded.frames)
    return WindowBatch(clip, sync, prompts, negatives, seeds=[11, 12][: len(prompts)])


def test_train_step_bench_times_the_bundled_network_as_dub_train_runs_it_on_a_cpu():
    """`dub bench train-step --preset demo --bf16`: the demo bundle's network (not the tiny
    preset), under bf16 autocast on a CPU, for both objectives."""
    result = CliRunner().invoke(
        app,
        ["bench", "train-step", "--device", "cpu", "--preset", "demo", "-b", "2", "--bf16", "--repeats", "1", "--json"],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["stage"].split(",")[0] for r in rows] == [
        "flow matching",
        "meanflow (25% s != t)",
        "meanflow (exact 25%)",
        "meanflow (all s != t)",
    ]
    for r in rows:
        assert r["dtype"] == "bfloat16" and r["batch_size"] == 2 and r["median_ms"] > 0, r
        assert "MF-MJT demo," in r["note"], r


def test_compare_reports_each_feature_vectors_cosine_with_the_eager_one():
    """The FP8 rows' deviation: besides the max error, the cosine of every feature vector (last
    axis) with the eager one. Row 0 turned by 45 degrees (cos = 1/sqrt 2), row 1 scaled (cos 1)."""
    from dub.workflows.bench.generate import compare

    eager = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    check = compare("fp8 features", torch.tensor([[[1.0, 1.0], [0.0, 3.0]]]), eager, tol=0.1)
    assert check["cosine_min"] == pytest.approx(2**-0.5, rel=1e-6)
    assert check["cosine_mean"] == pytest.approx((2**-0.5 + 1) / 2, rel=1e-6)
    assert compare("same", eager, eager, tol=0.0)["cosine_min"] == pytest.approx(1.0, rel=1e-6)


def test_like_for_like_train_step_alternates_both_objectives_and_reports_the_ratio_with_its_spread():
    """`dub bench train-step --like-for-like`: flow matching and MeanFlow (exactly 25 % through
    the JVP) with the same optimisations, in alternating rounds; the JSON carries every round's
    time, and the MeanFlow row the median of the per-round ratios with their range."""
    result = CliRunner().invoke(
        app,
        ["bench", "train-step", "--device", "cpu", "--preset", "demo", "-b", "4", "--duration", "2"]
        + ["--repeats", "3", "--like-for-like", "--json"],
    )
    assert result.exit_code == 0, result.output
    fm, mf = json.loads(result.stdout)["rows"]
    assert fm["stage"].startswith("flow matching, eager, like for like")
    assert mf["stage"].startswith("meanflow (exact 25%), eager, like for like")
    for row in (fm, mf):
        assert row["like_for_like"] is True and row["optimisations"] == "eager" and row["rounds"] == 3
        assert len(row["round_ms"]) == 3 and all(t > 0 for t in row["round_ms"])
        assert row["median_ms"] == pytest.approx(float(np.median(row["round_ms"])), rel=1e-3)  # rounded to us
    ratios = [m / f for m, f in zip(mf["round_ms"], fm["round_ms"])]
    # round_ms is rounded to 1 us of times of several ms: ratios agree to about 1e-3
    assert mf["meanflow_over_flow_matching"] == pytest.approx(float(np.median(ratios)), rel=1e-3)
    assert mf["ratio_min"] <= mf["meanflow_over_flow_matching"] <= mf["ratio_max"]
    assert "meanflow_over_flow_matching" not in fm


@pytest.mark.parametrize("negatives", [["", ""], ["rain and wind", ""]])
def test_fast_path_matches_eager_generator(negatives):
    torch.manual_seed(0)
    seconds = 6.0  # the sample's length
    net = build_network("tiny", "cpu", duration_s=seconds, seed=3)
    generator = Generator(net, DemoEncoders(), DemoCodec(latent_dim=net.config.latent_dim))
    sampler = SamplerConfig(sampler="meanflow", steps=1, cfg=4.5, rescale="std", phi=0.7)
    batch = _sample_batch(seconds, ["a bell rings", "a ball bounces"], negatives)
    clip_f, sync_f, text_f = generator.features(batch)
    eager_latents = generator.latents(clip_f, sync_f, text_f, batch, sampler)
    eager_wav = generator.decode(eager_latents, batch)

    noise = noise_for_seeds(batch.seeds, (net.config.latent_seq_len, net.config.latent_dim), "cpu")
    negative = generator._text(negatives) if any(negatives) else None
    fast = OneStepGraph(net, sampler.guidance, 2, decode=generator.codec.decode, dtype=torch.float32)
    assert not fast.uses_graph and fast.accepts("meanflow", 1, sampler.guidance)
    assert not fast.accepts("euler", 25, sampler.guidance)
    fast_wav = fast(noise, clip_f, sync_f, text_f, negative_text_f=negative)
    assert fast_wav.shape == eager_wav.shape == (2, net.config.latent_seq_len * generator.codec.hop_length)
    assert eager_wav.abs().max() > 1e-3  # real audio, not silence
    # same calls, same shapes: the same numbers (measured: bit-identical). The float32 tolerance
    # (rtol ~170u) is for a kernel choice that could still differ; Griffin-Lim would amplify any
    # real difference in the latents far beyond it
    torch.testing.assert_close(fast_wav, eager_wav, rtol=1e-5, atol=1e-6)

    # captured for 3 windows and given 2 (a partly filled last batch): rows are padded. Other
    # matrix shapes round differently, so compare latents (Griffin-Lim amplifies 1e-6 changes):
    # float32 rounding of other GEMM shapes through the tiny network (~20 layers, ~sqrt(n) u
    # each) and the CFG combination (x4.5) on latents up to ~6: measured 7e-6
    padded = OneStepGraph(net, sampler.guidance, 3, dtype=torch.float32)
    padded_latents = padded(noise, clip_f, sync_f, text_f, negative_text_f=negative)
    torch.testing.assert_close(padded_latents, eager_latents, rtol=1e-4, atol=1e-4)
    if negative is not None:  # the negative prompt changed the result, and the fast path followed
        plain = padded(noise, clip_f, sync_f, text_f)
        assert (plain - padded_latents).abs().max() > 1e-3


def test_fast_path_rejects_bad_input():
    net = build_network("tiny", "cpu", seed=0)
    fast = OneStepGraph(net, SamplerConfig(cfg=4.5).guidance, 2, dtype=torch.float32)
    cfg = net.config
    noise = torch.zeros(2, cfg.latent_seq_len, cfg.latent_dim)
    clip = torch.zeros(1, cfg.clip_seq_len, cfg.clip_dim)
    with pytest.raises(ValueError, match="share the batch size"):
        fast(
            noise, clip, torch.zeros(2, cfg.sync_seq_len, cfg.sync_dim), torch.zeros(2, cfg.text_seq_len, cfg.text_dim)
        )
    with pytest.raises(ValueError, match="CUDA graphs need CUDA tensors"):
        CudaGraphCall(lambda x: x * 2, [torch.zeros(3)], use_graph=True)


def test_generator_replays_the_fast_step_when_it_matches_the_sampler():
    # The hook `dub generate` replicas switch on under CUDA; on the CPU the OneStepGraph runs
    # eagerly, so the hooked Generator must give exactly the eager latents, and only for the
    # sampler setting it was built for.
    seconds = 6.0
    net = build_network("tiny", "cpu", duration_s=seconds, seed=5)
    generator = Generator(net, DemoEncoders(), DemoCodec(latent_dim=net.config.latent_dim))
    sampler = SamplerConfig(sampler="meanflow", steps=1, cfg=2.0, rescale="proj")
    batch = _sample_batch(seconds, ["a bell rings", "a ball bounces"], ["", ""])
    clip_f, sync_f, text_f = generator.features(batch)
    eager = generator.latents(clip_f, sync_f, text_f, batch, sampler)
    assert generator.use_fast_step(2, sampler) is None  # CPU: no graph to capture
    calls = []
    graph = OneStepGraph(net, sampler.guidance, 2, dtype=torch.float32)
    generator.fast_step = lambda *a, **k: calls.append(1) or graph(*a, **k)
    generator.fast_step.accepts = graph.accepts
    hooked = generator.latents(clip_f, sync_f, text_f, batch, sampler)
    # the same step eagerly, same shapes (measured: bit-identical); float32 tolerance as above
    torch.testing.assert_close(hooked, eager, rtol=1e-5, atol=1e-6)
    assert calls == [1]
    generator.latents(clip_f, sync_f, text_f, batch, SamplerConfig(sampler="euler", steps=2, cfg=2.0))
    assert calls == [1]  # another sampler goes the eager way


def _tiny_mmaudio_codec(latent_dim: int) -> MMAudioCodec:
    """Mel + VAE + BigVGAN at toy sizes (hop 64), random weights: the decoder `dub generate`
    captures and compiles for the MMAudio bundles."""
    torch.manual_seed(0)
    mel = MelConverter(MelConfig(16_000, 256, 64, 256, 16, 0.0, 8_000.0, "log10"))
    vae = VAE(VAEConfig(data_dim=16, embed_dim=latent_dim, hidden_dim=8)).eval()
    vocoder = BigVGAN(
        BigVGANConfig(
            num_mels=16,
            upsample_rates=(4, 4, 4),
            upsample_kernel_sizes=(8, 8, 8),
            upsample_initial_channel=16,
            resblock_kernel_sizes=(3,),
            resblock_dilation_sizes=((1, 3),),
            sampling_rate=16_000,
        )
    ).eval()
    return MMAudioCodec(mel, vae, vocoder)


def test_fast_decoder_pads_chunks_and_compiles_to_the_eager_waveforms():
    """`dub generate --compile` decodes through dub.model.runtime.fast.DecoderGraph: at a fixed batch size
    (5 windows -> chunks of 2, the last padded) and compiled by Inductor, the waveforms are the
    eager decoder's."""
    net = build_network("tiny", "cpu", duration_s=2.0, seed=1)
    generator = Generator(net, DemoEncoders(), _tiny_mmaudio_codec(net.config.latent_dim))
    latents = torch.randn(
        5, net.config.latent_seq_len, net.config.latent_dim, generator=torch.Generator().manual_seed(2)
    )
    batch = WindowBatch(None, None, [""] * 5, [""] * 5, seeds=list(range(5)))
    eager = generator.decode(latents, batch)
    assert eager.shape == (5, net.config.latent_seq_len * generator.codec.samples_per_latent)
    assert eager.abs().max() > 1e-3

    assert generator.use_fast_decoder(2) is None  # the CPU has no graph to capture
    note = generator.use_fast_decoder(2, compile=True)
    assert note is not None and "torch.compile ok" in note and "batch 2" in note, note
    fast = generator.decode(latents, batch)
    # Inductor fuses the float32 vocoder in another order, on waveforms of |x| <= 1 (here ~0.1):
    # rounding of the BigVGAN kind (tests/test_codec.py's ACT_TOL); measured 8e-8
    torch.testing.assert_close(fast, eager, rtol=0, atol=1e-5)
    assert batch.timings["decode_audio_s"] > 0


def test_generate_replica_compile_flag_compiles_the_step_and_keeps_the_audio():
    """The replica `dub generate --compile` builds: the one-step network goes through
    torch.compile (the demo bundle has no VAE/vocoder to compile), its latents for a real
    decoded window equal the eager replica's, and the replica makes audio from them."""
    from dub.workflows.generate.stages import GenerateReplica, decode_windows

    sampler = SamplerConfig(cfg=2.0)
    eager = GenerateReplica("demo", None, sampler.as_dict(), "cpu", batch_size=2)
    compiled = GenerateReplica("demo", None, sampler.as_dict(), "cpu", batch_size=2, compile=True)
    assert eager.fast_paths == []
    assert compiled.fast_paths == ["one-step network compiled; no graph, batch 2"]
    assert compiled.generator.fast_step.compiled

    info = bundle_info("demo")
    rows = {
        "video_id": ["a", "b"],
        "window_index": [0, 0],
        "num_windows": [1, 1],
        "start_s": [0.0, 0.0],
        "valid_s": [info.window_s] * 2,
        "prompt": ["", "a bell"],
        "negative_prompt": ["", ""],
        "seed": [1, 2],
        "path": [str(SAMPLE)] * 2,
    }
    batch = decode_windows(
        {k: np.array(v, dtype=object if isinstance(v[0], str) else None) for k, v in rows.items()},
        clip_fps=info.clip_fps,
        clip_size=info.clip_size,
        sync_fps=info.sync_fps,
        sync_size=info.sync_size,
        window_s=info.window_s,
    )
    assert list(batch["error"]) == ["", ""]
    wb = WindowBatch(
        torch.from_numpy(batch["clip_frames"]),
        torch.from_numpy(batch["sync_frames"]),
        list(rows["prompt"]),
        list(rows["negative_prompt"]),
        seeds=list(rows["seed"]),
    )
    features = eager.generator.features(wb)
    want = eager.generator.latents(*features, wb, sampler)
    got = compiled.generator.latents(*features, wb, sampler)
    # Inductor fuses float32 ops in another order: 1e-6-level differences (Griffin-Lim, the demo
    # codec, would amplify them, so the audio is checked for being made, not for equality)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    out = compiled(dict(batch))
    assert list(out["error"]) == ["", ""] and np.abs(out["audio"]).max() > 1e-3


def test_compiled_or_eager_falls_back_for_good_when_compiling_fails():
    """What `--compile` wraps the encoder towers in: a compiler failure at the first call means
    the eager module from then on, with the reason, not failed windows."""
    from dub.model.kernels.graphs import CompiledOrEager

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    linear = torch.nn.Linear(4, 3)
    x = torch.randn(2, 4)
    wrapped = CompiledOrEager(linear, backend=broken_backend)
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        got = wrapped(x)
    torch.testing.assert_close(got, linear(x))  # the eager module itself (torch's float32 defaults)
    assert "no compiler here" in wrapped.failed
    torch.testing.assert_close(wrapped(x), linear(x))  # stays eager, no second warning needed
    assert wrapped.in_features == 4  # the module's attributes read through
    assert [name for name, _ in wrapped.named_parameters()] == ["module.weight", "module.bias"]
    working = CompiledOrEager(linear, backend="eager")
    torch.testing.assert_close(working(x), linear(x))
    assert working.failed is None


def test_bf16_checks_measure_both_paths_from_float32():
    """`compare` with the float32 result: a fast bf16 path passes when it is no further from
    float32 than 1.5x the eager bf16 path, even where the two bf16 outputs differ by more than
    the plain tolerance (deep stacks drift in bf16 whatever the form)."""
    from dub.workflows.bench.generate import BF16_SLACK, compare

    exact = torch.linspace(-1, 1, 101)
    eager = exact + 0.03  # the eager bf16 path's own drift: 3 % of peak
    fast = exact - 0.03  # as far on the other side: 6 % from eager, beyond 2 %
    assert not compare("plain", fast, eager, 2e-2)["pass"]
    check = compare("vs float32", fast, eager, 2e-2, exact=exact)
    # exact +- 0.03 in float32: the measured drift is 0.03 up to ~u (1e-7 absolute, 2e-6 relative)
    assert check["pass"] and check["fast_vs_float32"] == pytest.approx(0.03, rel=1e-3)
    assert check["eager_vs_float32"] == pytest.approx(0.03, rel=1e-3) and check["float32_slack"] == BF16_SLACK
    worse = exact - 0.03 * BF16_SLACK * 1.1
    assert not compare("too far", worse, eager, 2e-2, exact=exact)["pass"]
    assert not compare("nan", fast + float("nan"), eager, 2e-2, exact=exact)["pass"]


def test_gpu_bench_script_runs_its_parts_in_children_and_writes_json(tmp_path):
    """scripts/gpu_bench.py as a GPU run uses it (child process per part, rows streamed back,
    JSON rewritten after each part), here on the CPU with the tiny preset: a harness that breaks on the GPU
    loses the whole run."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    # 2 s clips and budgets no stage can outrun: the parts' limits are sized for a GPU, so on a
    # busy 2-core CPU the later stages were skipped; this test checks the harness, not the timings
    command = [
        sys.executable,
        "scripts/gpu_bench.py",
        "--device",
        "cpu",
        "--preset",
        "tiny",
        "--batch-size",
        "2",
        "--repeats",
        "1",
        "--duration",
        "2",
        "--budget-s",
        "3600",
        "--part-limit-scale",
        "10",
        "--out",
        str(tmp_path),
        "--parts",
    ]
    scratch = tmp_path / "scratch"  # the script's own temporary folder must not outlive it
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    typo = subprocess.run(
        [*command, "generate,e2e-fp9"], cwd=root, env=env, timeout=120, capture_output=True, text=True
    )
    assert typo.returncode == 2 and "e2e-fp9" in typo.stderr  # refused before any part runs
    subprocess.run([*command, "generate"], cwd=root, env=env, check=True, timeout=300, capture_output=True)
    assert not any(scratch.glob("dub-gpu-bench-*"))
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert result["parts"]["generate"]["status"] == "ok" and result["parts"]["generate"]["rows"] > 0
    stages = {row["stage"] for row in result["rows"] if row["bench"] == "generate"}
    assert any("network 1 step + CFG" in stage for stage in stages)
    assert all(row["median_ms"] > 0 and row["device"] == "cpu" for row in result["rows"])


def test_a_replica_out_of_device_memory_halves_its_windows_per_call_and_keeps_every_window(capsys):
    """--batch-size too large for the GPU: the replica splits the call instead of failing it or
    retrying window by window, and later batches start at the size that fit. The memory limit
    is simulated (no GPU here): features for more than 2 windows raise torch.OutOfMemoryError,
    as a CUDA allocation does; the demo model does everything else."""
    from dub.workflows.generate.stages import GenerateReplica, decode_windows

    replica = GenerateReplica("demo", None, SamplerConfig(cfg=2.0).as_dict(), "cpu", batch_size=5)
    real_features, sizes = replica.generator.features, []

    def features_within_memory(wb):
        sizes.append(len(wb.seeds))
        if len(wb.seeds) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_features(wb)

    replica.generator.features = features_within_memory
    info = bundle_info("demo")
    n = 5
    rows = {
        "video_id": [f"v{i}" for i in range(n)],
        "window_index": [0] * n,
        "num_windows": [1] * n,
        "start_s": [0.0] * n,
        "valid_s": [info.window_s] * n,
        "prompt": [""] * n,
        "negative_prompt": [""] * n,
        "seed": list(range(n)),
        "path": [str(SAMPLE)] * n,
    }
    batch = decode_windows(
        {k: np.array(v, dtype=object if isinstance(v[0], str) else None) for k, v in rows.items()},
        clip_fps=info.clip_fps,
        clip_size=info.clip_size,
        sync_fps=info.sync_fps,
        sync_size=info.sync_size,
        window_s=info.window_s,
    )
    out = replica(dict(batch))
    assert list(out["error"]) == [""] * n and (np.abs(out["audio"]).max(axis=1) > 1e-3).all()
    assert sizes == [5, 3, 2, 1, 2] and replica.memory.max_windows == 2  # 5 -> (3 -> 2 + 1) + 2
    log = capsys.readouterr().out
    assert "out of memory with 5 windows per call" in log and "it now runs at most 2 (lower --batch-size)" in log
    sizes.clear()
    out = replica(dict(batch))
    assert list(out["error"]) == [""] * n and sizes == [2, 2, 1]  # straight at the size that fit


def test_media_bench_measures_the_machines_decoding_capacity_in_parallel_processes():
    """What end-to-end throughput needs from the CPUs: real H.264 decoded at both rates in
    several processes at once; clips/s is every clip decoded over the wall time."""
    from dub.workflows.bench import BenchOptions
    from dub.workflows.bench.media import decode_workers, run

    assert decode_workers(16) == 15 and decode_workers(1) == 1  # one CPU stays with the GPU replica
    rows = {
        r.stage: r
        for r in run(BenchOptions(device="cpu", repeats=2, warmup=0, duration_s=2.0, extra={"decode_workers": 2}))
    }
    parallel = rows["decode both rates, one pass, 2 processes in parallel"]
    # derived from the row's own numbers in float64: approx only absorbs the last bits
    assert parallel.batch_size == 4 and parallel.audio_s == pytest.approx(8.0)
    assert parallel.median_ms > 0 and parallel.clips_per_s == pytest.approx(4000.0 / parallel.median_ms)
    assert "decoding capacity: 4 clips" in parallel.note


def test_e2e_upload_row_times_dub_generates_pageable_copy_of_target_size_frames():
    """CUDA-only in `dub bench e2e` (on the CPU the copy is no copy); here the code path and
    the row it makes, with the tiny pipeline: 2 windows of 2 s at CLIP's 384 and Synchformer's
    224 sizes."""
    from dub.workflows.bench import BenchOptions
    from dub.workflows.bench.e2e import ModelSidePipeline, _replica_upload_row
    from dub.workflows.bench.generate import StageRunner

    opts = BenchOptions(device="cpu", repeats=1, duration_s=2.0)
    runner = StageRunner("e2e", opts, "cpu", "float32")
    _replica_upload_row(runner, ModelSidePipeline("tiny", "cpu", 2, 2.0), opts)
    (row,) = runner.rows
    assert row.stage == "model-side: upload decoded windows at target sizes, pageable (as dub generate's replica)"
    assert row.median_ms > 0 and row.batch_size == 2 and row.dtype == "uint8"
    megabytes = 2 * (16 * 384 * 384 * 3 + 50 * 224 * 224 * 3) / 2**20
    assert row.note.startswith(f"{megabytes:.0f} MB, ")
