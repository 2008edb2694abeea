"""Media I/O shared by every workflow: probe, decode at the model rates, windows, audio, remux.

Submodules import PyAV lazily where they can, so importing this package is cheap:

    probe.probe_video(path) -> ProbeResult            header + packet scan, one decoded frame
    decode.decode_window(path, start_s, duration_s, targets) -> DecodedWindow
    windows.plan_windows(duration_s, window_s, overlap_s) / windows.stitch(audios, windows, sr)
    audio.encode_audio_file / audio.read_audio / audio.resample
    remux.remux_with_audio / remux.strip_audio
    synth.write_synthetic_video                        small real test / benchmark clips
"""
