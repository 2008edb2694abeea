"""`dub extract`: WebDataset training shards (codec latents + CLIP/sync/text features) from clips with audio."""
