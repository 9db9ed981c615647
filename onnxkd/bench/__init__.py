"""`bench`: latency, throughput, memory, size and accuracy per model and execution provider."""
