"""`dub generate`: dub every clip of a manifest (or text prompts) on a local or remote Ray."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import typer

from dub.commands.choices import AudioCodec, OutputFormat, RescaleMode, Resize, Sampler, SelectMetric
from dub.commands.paths import local_path, location

DEFAULT_MANIFEST = "manifest.parquet"


def register(app: typer.Typer) -> None:
    @app.command()
    def generate(
        manifest: str | None = typer.Option(
            None,
            "--manifest",
            "-m",
            help="Manifest from `dub ingest` (default: ./manifest.parquet); a path or s3://, gs:// URI.",
            callback=location,
        ),
        out: str = typer.Option(
            "dubbed",
            "--out",
            "-o",
            help="Output directory (one generation config per directory); a path or an s3://, gs:// prefix, "
            "written through a local stage folder (DUB_STAGE_DIR, default ~/.cache/dub/stage).",
            callback=location,
        ),
        prompts: Path | None = typer.Option(
            None, "--prompts", help="Text-to-audio: a file with one prompt per line (no video).", callback=local_path
        ),
        model: str = typer.Option("demo", "--model", help="Model bundle name (see `dub weights list`)."),
        checkpoint: Path | None = typer.Option(
            None, "--checkpoint", help="An MF-MJT checkpoint (.safetensors) from `dub train`.", callback=local_path
        ),
        sampler: Sampler | None = typer.Option(
            None,
            help="meanflow (1..k steps) or euler (the flow-matching baseline). Default: the model bundle's "
            "(MeanFlow for the demo model and MF-MJT weights, Euler for MMAudio's flow-matching networks).",
            rich_help_panel="Sampling",
            show_default=False,
        ),
        steps: int | None = typer.Option(
            None,
            help="Sampler steps: 1 for one-step MeanFlow; 25 for the Euler baseline. Default: the model bundle's.",
            show_default=False,
        ),
        cfg: float | None = typer.Option(
            None,
            "--cfg",
            help="Classifier-free guidance weight (<= 1: no unconditional pass). Default: the model bundle's, the one its published figures were measured with.",
        ),
        cfg_rescale: float | None = typer.Option(
            None, "--cfg-rescale", help="Scalar rescale strength phi for --rescale-mode std (default: the bundle's)."
        ),
        rescale_mode: RescaleMode | None = typer.Option(
            None, "--rescale-mode", help="How guidance is rescaled (default: the bundle's).", rich_help_panel="Sampling"
        ),
        seed: int = typer.Option(0, help="Global seed; each window's noise comes from (seed, video id, window)."),
        prompt: str = typer.Option("", help="Default text prompt (a manifest row's own prompt wins)."),
        negative_prompt: str = typer.Option(
            "", "--negative-prompt", help="Text for the unconditional branch.", rich_help_panel="Sampling"
        ),
        fmt: OutputFormat = typer.Option(
            OutputFormat.mp4, "--format", help="Remuxed mp4s, WebDataset shards, or both.", rich_help_panel="Output"
        ),
        audio_codec: AudioCodec = typer.Option(
            AudioCodec.aac, "--audio-codec", help="Codec of the generated track.", rich_help_panel="Output"
        ),
        candidates: int = typer.Option(
            1,
            "--candidates",
            min=1,
            help="Noise draws per window; per clip the one whose audio agrees best with the video (--select) is kept. One network evaluation each.",
            rich_help_panel="Sampling",
        ),
        select: SelectMetric = typer.Option(
            SelectMetric.av_align,
            "--select",
            help="How --candidates chooses: av-align (onsets against the video's motion peaks, no weights), desync (Synchformer's offset, lower wins) or clap (prompt-audio agreement); the last two need their weights.",
            rich_help_panel="Sampling",
        ),
        reject: str | None = typer.Option(
            None,
            "--reject",
            metavar="KINDS",
            help="speech, music or speech,music: candidates PANNs tags as such are not chosen (needs PANNs weights); clips where every candidate was are kept and marked content_rejected.",
            rich_help_panel="Sampling",
        ),
        loudness: float | None = typer.Option(
            None,
            "--loudness",
            metavar="LUFS",
            help="Normalise every output to this integrated loudness (ITU-R BS.1770 / EBU R128: -23); silence stays silence.",
            rich_help_panel="Output",
        ),
        true_peak: float = typer.Option(
            -1.0,
            "--true-peak",
            metavar="DBTP",
            help="With --loudness: the gain is capped so the true peak stays under this (dBTP).",
            rich_help_panel="Output",
        ),
        keep_original_audio: bool = typer.Option(
            False, "--keep-original-audio", help="Keep the source audio as a second track.", rich_help_panel="Output"
        ),
        save_features: bool = typer.Option(
            False, "--save-features", help="Store CLIP/sync/text features in the shards.", rich_help_panel="Output"
        ),
        window: float | None = typer.Option(
            None, "--window", help="Window length in seconds (default: the model's).", rich_help_panel="Sampling"
        ),
        overlap: float = typer.Option(
            1.0, "--overlap", help="Window overlap in seconds (crossfaded).", rich_help_panel="Sampling"
        ),
        duration: float | None = typer.Option(
            None, "--duration", help="Text-to-audio clip length in seconds.", rich_help_panel="Sampling"
        ),
        batch_size: int = typer.Option(
            4, "--batch-size", help="Windows per model call (mixing videos).", rich_help_panel="Performance"
        ),
        limit: int | None = typer.Option(None, "--limit", help="Process at most this many pending videos."),
        address: str | None = typer.Option(
            None, "--address", help="Ray cluster address (else RAY_ADDRESS, else local Ray).", rich_help_panel="Cluster"
        ),
        replicas: int | None = typer.Option(
            None,
            "--replicas",
            help="Model replicas (default: one per GPU, else 1 CPU actor).",
            rich_help_panel="Cluster",
        ),
        writers: int | None = typer.Option(
            None,
            "--writers",
            min=0,
            help="Ray actors that stitch, encode and write the clips, so one driver does not bound the "
            "cluster (default: one per replica with --address/RAY_ADDRESS; 0, the driver writes, on the "
            "embedded local Ray).",
            rich_help_panel="Cluster",
        ),
        fp8: bool = typer.Option(
            False,
            "--fp8",
            help="Run the linear layers of CLIP's vision tower in FP8 (GPUs with compute capability 8.9+): faster, slightly different features (docs/benchmarks.md).",
            rich_help_panel="Performance",
        ),
        resize: Resize = typer.Option(
            Resize.fast,
            "--resize",
            help="How frames are resized for CLIP (384x384) and Synchformer (224 crop): fast is swscale's bicubic; exact is torchvision's antialiased bicubic, as MMAudio's features were made, several times slower CPU decoding (docs/benchmarks.md).",
            rich_help_panel="Performance",
        ),
        compile_: bool = typer.Option(
            False,
            "--compile",
            help="torch.compile the one-step network, the VAE + vocoder and the CLIP/Synchformer towers in each replica (minutes to build; worth it for large runs). Falls back to eager with the reason.",
            rich_help_panel="Performance",
        ),
        overwrite: bool = typer.Option(False, "--overwrite", help="Regenerate everything, even under another config."),
        max_failures: int | None = typer.Option(
            None, "--max-failures", help="Stop when more videos than this have failed.", rich_help_panel="Cluster"
        ),
        dry_run: bool = typer.Option(
            False,
            "--dry-run",
            help="Say what the run would do (pending clips, windows, hours of audio, outputs already done) and how long it would take here, from a short calibration; write nothing.",
        ),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Generate a synchronized soundtrack for every pending clip; resumable and idempotent."""
        from rich.console import Console

        from dub.storage.lock import OutputInUse
        from dub.workflows.generate.config import GenerateConfig
        from dub.workflows.generate.run import GenerateError, run_generate

        console = Console(stderr=True)
        if prompts is None and manifest is None:
            manifest = Path(DEFAULT_MANIFEST)
            if not manifest.exists():
                raise typer.BadParameter(
                    f"no --manifest given and ./{DEFAULT_MANIFEST} does not exist; "
                    "run `dub ingest VIDEOS -o manifest.parquet` first",
                    param_hint="--manifest",
                )
        try:
            config = GenerateConfig(
                out_dir=str(out),
                manifest=str(manifest) if prompts is None else None,
                prompts_file=str(prompts) if prompts else None,
                model=model,
                checkpoint=str(checkpoint) if checkpoint else None,
                sampler=sampler_config(model, checkpoint, sampler, steps, cfg, rescale_mode, cfg_rescale),
                seed=seed,
                prompt=prompt,
                negative_prompt=negative_prompt,
                format=fmt.value,
                audio_codec=audio_codec.value,
                keep_original_audio=keep_original_audio,
                save_features=save_features,
                window_s=window,
                overlap_s=overlap,
                t2a_duration_s=duration,
                batch_size=batch_size,
                limit=limit,
                address=address,
                overwrite=overwrite,
                max_failures=max_failures,
                replicas=replicas,
                writers=writers,
                compile=compile_,
                fp8=fp8,
                resize=resize.value,
                loudness_lufs=loudness,
                candidates=candidates,
                reject=tuple(k.strip() for k in reject.split(",") if k.strip()) if reject else (),
                select=select.value,
                true_peak_dbtp=true_peak,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
        if dry_run:
            _dry_run(config, console, as_json)
            return

        show = not quiet and not as_json
        try:
            if show:
                summary = _run_with_progress(config, console)
            else:
                # --json: stdout holds the summary alone; what Ray prints there while the run goes
                # (a lost node, a restarted actor) goes to stderr
                started_here = not _ray_running()
                with contextlib.redirect_stdout(sys.stderr):
                    summary = run_generate(config)
                    if started_here:  # its printing threads stop too, before the summary is printed
                        _stop_ray()
        except (GenerateError, OutputInUse, OSError) as exc:  # OSError: also an unreachable store
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
        if as_json:
            print(json.dumps(summary.as_dict(), indent=2))
        elif show:
            _print_summary(summary, console)
        if summary.failed and max_failures is not None and summary.failed > max_failures:
            raise typer.Exit(1)


def _dry_run(config, console, as_json: bool) -> None:
    from dub.workflows.generate.plan import plan_generate
    from dub.workflows.generate.run import GenerateError

    try:
        with console.status("calibrating on one window"):
            plan = plan_generate(config)
    except (GenerateError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps(plan.as_dict(), indent=2))
        return
    console.print(f"dry run for {plan.out_dir} (config {plan.config_hash}; existing run: {plan.existing_run})")
    console.print(
        f"  {plan.pending} clip(s) to generate, {plan.pending_windows} window(s), "
        f"{plan.pending_audio_hours * 60:.1f} min of audio; {plan.already_done} already done, "
        f"{plan.skipped} skipped by ingest, {plan.total} in all"
    )
    if plan.estimated_wall_s is not None and plan.model_s_per_call is not None:
        console.print(
            f"  {plan.replicas} {plan.device} replica(s), {plan.decode_slots} decode slot(s): "
            f"load {plan.load_s:.1f} s, decode {plan.decode_s_per_window:.2f} s/window, "
            f"model {plan.model_s_per_call:.2f} s per call of {plan.batch_size}"
        )
        console.print(f"  expected wall time here: {plan.estimated_wall_s:.0f} s, plus Ray's start-up")
    if plan.note:
        console.print(f"  note: {plan.note}")


def _run_with_progress(config, console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from dub.storage.lock import OutputInUse
    from dub.workflows.generate.run import GenerateError, run_generate

    with Progress(
        TextColumn("[bold]dub generate"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task("generate", total=None, detail="reading inputs, starting Ray")
        started = time.perf_counter()

        def update(summary):
            todo = summary.total - summary.skipped - summary.already_done
            elapsed = time.perf_counter() - started
            rate = summary.generated / elapsed if elapsed > 0 else 0.0
            bar.update(
                task,
                total=max(todo, 1),
                completed=summary.generated + summary.failed,
                detail=f"done {summary.done} · failed {summary.failed} · skipped {summary.skipped} "
                f"· {rate:.2f} clips/s",
            )

        try:
            return run_generate(config, progress=update)
        except (GenerateError, OutputInUse, OSError):
            bar.remove_task(task)  # refused before it ran: the error line says everything
            raise


def _ray_running() -> bool:
    import ray

    return ray.is_initialized()


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _print_summary(summary, console) -> None:
    from rich.table import Table

    table = Table(title=f"dub generate → {summary.out_dir}")
    table.add_column("videos")
    table.add_column("count", justify="right")
    table.add_row("in manifest", str(summary.total))
    table.add_row("done (this run)", str(summary.generated))
    table.add_row("done (earlier runs)", str(summary.already_done))
    table.add_row("failed", str(summary.failed))
    table.add_row("skipped", str(summary.skipped))
    table.add_row("audio generated", f"{summary.audio_seconds:.1f} s")
    table.add_row("wall time", f"{summary.wall_s:.1f} s ({summary.clips_per_s:.2f} videos/s)")
    if summary.stage_seconds:
        stages = summary.stage_seconds
        table.add_row("CPU decoding (summed)", f"{stages.get('decode_cpu', 0.0):.1f} s")
        table.add_row(
            "model: features / generate / audio",
            " / ".join(f"{stages.get(k, 0.0):.1f}" for k in ("features", "generate", "decode_audio")) + " s",
        )
        writers = f"{summary.writers} writer actor(s)" if summary.writers else "the driver writes"
        table.add_row(f"driver CPU ({writers})", f"{summary.driver_cpu_s:.1f} s")
    if summary.model_busy_fraction is not None:
        table.add_row(f"model replicas busy ({summary.replicas})", f"{100 * summary.model_busy_fraction:.0f} %")
    for reason, count in sorted(summary.errors.items()):
        table.add_row(f"  failed: {reason}", str(count))
    console.print(table)


def sampler_config(
    model: str,
    checkpoint: Path | None,
    sampler: Sampler | None,
    steps: int | None,
    cfg: float | None,
    rescale_mode: RescaleMode | None,
    cfg_rescale: float | None,
):
    """The sampling flags, each left out taking the model bundle's default: MMAudio's networks were
    trained for 25 Euler steps, and a single step from them is far from what they were made for."""
    from dub.model.runtime.generator import SamplerConfig

    defaults = _default_sampler(model, checkpoint)
    return SamplerConfig(
        sampler=defaults.sampler if sampler is None else sampler.value,
        steps=defaults.steps if steps is None else steps,
        cfg=defaults.cfg if cfg is None else cfg,
        rescale=defaults.rescale if rescale_mode is None else rescale_mode.value,
        phi=defaults.phi if cfg_rescale is None else cfg_rescale,
    )


def _default_sampler(model: str, checkpoint: Path | None):
    """The model's default sampler settings (what its published figures used; cfg 1 for weights
    trained with guidance folded in); an unknown bundle name falls through to GenerateConfig,
    which says what the known ones are."""
    from dub.model.runtime.bundles import MF_MJT_SAMPLER, sampler_defaults

    try:
        return sampler_defaults(model, checkpoint)
    except ValueError:
        return MF_MJT_SAMPLER
