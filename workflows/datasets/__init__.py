"""Benchmark data sets with known answers.

foley-synth (`foley_synth.py`): rendered objects whose bounces, wall hits and flashes trigger
real CC0 recordings (`sound_bank.py`, `sounds/`) at exactly known times; train/val/test
splits, deterministic from a seed. Modules: foley_config (FoleySynthConfig), foley_scene
(sampling, motion, frames, audio), foley_encode (mp4 writing), foley_synth (the build).
"""
