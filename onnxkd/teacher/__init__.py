"""The teacher: loading a model as found in the wild, graph passes, output selection and the
onnxruntime runner. The input spec it is fed with is decided in `onnxkd.data.spec`."""
