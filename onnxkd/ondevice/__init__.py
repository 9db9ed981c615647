"""On-device distillation: a student keeps learning from cached teacher targets where only
onnxruntime is available, through onnxruntime-training's artifacts and training API.

onnxruntime-training (last release 1.19.2) installs the same `onnxruntime` package as
onnxruntime, so its parts run in a separate environment (`.venv-ondevice`, built by
`bash .ci/setup-ondevice`) as a worker process. Which module runs where:

main environment (the CLI's):
    `api` (the entry functions `make_artifacts`, `train_on_device`), `student` (check the
    student, convert it to an opset and IR version onnxruntime-training reads, list its
    parameters), `bridge` (find the environment, run the worker).
on-device environment:
    `worker` (the entry point), `loss_block` (the KD loss as an `onnxblock.Block`),
    `generate` (write the artifacts), `trainer` (train, evaluate, checkpoint, export),
    `session` (open artifacts with the training API).
both:
    `config` (settings, the artifacts folder's layout and checks), `errors`.

Example:
    >>> from onnxkd.ondevice.api import make_artifacts, train_on_device  # doctest: +SKIP
    >>> folder, _ = make_artifacts(ArtifactsConfig(Path("run/student.onnx")))  # doctest: +SKIP
    >>> train_on_device(TrainConfig(folder, cache=Path("cache")))  # doctest: +SKIP
"""
