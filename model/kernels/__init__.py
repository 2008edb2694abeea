"""GPU fast paths below the model: Triton kernels, FP8 linears, CUDA-graph capture and compile fallbacks, and the switch that enables a kernel after a self-check."""
