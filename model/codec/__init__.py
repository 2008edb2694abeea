"""Audio <-> latents: the codec protocol and MMAudio's codec (mel front end, VAE, BigVGAN vocoder)."""
