"""Layer 2: model spec, checkpoint I/O, conversion, synthetic checkpoints. Imports only `plugins`."""
