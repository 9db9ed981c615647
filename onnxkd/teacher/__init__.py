"""The teacher: loading a model as found in the wild, graph passes, the onnxruntime runner,
output selection and the input spec it is fed with."""
