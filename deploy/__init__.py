"""Layer 4: the engine bundle and the GPU-node launcher (issue #5)."""
