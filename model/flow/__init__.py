"""The MeanFlow objective and sampling from the network: the loss, its JVP tangents, classifier-free guidance, samplers."""
