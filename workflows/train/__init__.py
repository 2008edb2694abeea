"""`dub train`: MF-MJT training (MeanFlow or flow matching) on Ray Train, reading `dub extract` shards."""
