"""The experiment of the paper: teachers on protein embeddings, every compressor applied to each,
fidelity, task, size and latency measured, a JSON summary and a figure written. `python main.py`
runs it (`benchmark.cli`); the library below (distil_rank) never imports it."""
