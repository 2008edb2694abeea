"""dub generate: the Ray Data program that dubs a manifest (config, stages, sinks, run)."""
