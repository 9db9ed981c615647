"""The teacher stage: onnxruntime runner, graph passes, cache writer and reader."""
