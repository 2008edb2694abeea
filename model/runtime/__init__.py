"""Running the model: the batched Generator, its CUDA-graph and compiled fast paths, and bundles (a whole stack from local files)."""
