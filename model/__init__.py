"""MF-MJT as pure PyTorch: network, MeanFlow objective, samplers, encoders, codec, weight loading.

No Ray, no CLI, no file I/O beyond loading weights.
"""
