"""The MF-MJT network (MMAudio's multimodal joint transformer): its config and presets, layers, rotary position embeddings, transformer blocks."""
