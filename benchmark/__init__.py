"""bpfree-bench: the harness (data, architectures, the training loop, measurement, tuning, reports)."""
