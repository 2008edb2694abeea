"""Visual and text conditions: the encoder protocol and MMAudio's implementation (CLIP + Synchformer)."""
