"""How hard each logit loss pushes a fresh student (issue 16's DKD finding, now with a results
file): the gradient of CE, KD and DKD with respect to the student's logits and its weights, on
the first real training batch, before any step.

    .venv/bin/python benchmarks/loss_gradients.py [--samples 512]

For each suite (MNIST, the CIFAR-10 subset; the zoo teacher; the suites' MobileNetV2-w0.5
student freshly initialised on seed 0, in training mode as its first step sees it): the
teacher's logits on view 0 of a one-view cache of KD's augmentation; then for CE, KD (α 1 and
its default α 0.9, T 4) and DKD (its defaults, warm-up done: the full term) the mean over
samples of each sample's gradient norm with respect to its logits (the batch mean undone), and
the norm of the batch loss's gradient with respect to all weights. A loss with a larger
gradient needs a lower learning rate for the same step. Results:
benchmarks/results/loss_gradients.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from distill_accuracy import SUITES

from onnxkd.bench.host import host_info
from onnxkd.cache.build import CacheConfig, cache_teacher
from onnxkd.cache.reader import CacheReader
from onnxkd.data.source import DataRef
from onnxkd.distill.losses.base import build_loss
from onnxkd.students import create_student

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "loss_gradients.json"
LOSSES = {
    "ce": ("ce", {}),
    "kd_alpha1": ("kd", {"alpha": 1.0, "temperature": 4.0}),
    "kd_default": ("kd", {"alpha": 0.9, "temperature": 4.0}),
    "dkd_default": ("dkd", {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--work", type=Path, default=ROOT / "onnxkd-out" / "bench-gradients")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {
        "host": host_info(1, packages=("torch",)),
        "samples": args.samples,
        "command": " ".join(sys.argv),
    }
    for name in ("mnist", "cifar"):
        results[name] = measure(SUITES[name], args)
        print(name, json.dumps(results[name]), flush=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written to {OUT}")


def measure(suite: dict, args) -> dict:
    cache = cache_teacher(
        CacheConfig(
            suite["teacher"],
            DataRef(suite["data"]),
            workdir=args.work,
            views=1,
            augment=suite["kd_augment"],
            dtype="float32",
            threads=1,
        ),
        log=lambda s: None,
    ).path
    reader = CacheReader(cache)
    section = reader.section("train")
    idx = np.arange(min(args.samples, section.n))
    x = torch.from_numpy(section.model_input(reader.open_data("train", None, 1), idx, 0))
    teacher = {"logits": torch.from_numpy(section.scores(idx, 0)).float()}
    labels = torch.from_numpy(section.labels(idx)).long()
    out = {
        "teacher_accuracy_on_batch": float((teacher["logits"].argmax(1) == labels).float().mean())
    }
    for key, (loss_name, kwargs) in LOSSES.items():
        torch.manual_seed(0)
        student = create_student(suite["student"], 10, x.shape[1], x.shape[-1]).train()
        loss_fn = build_loss(loss_name, **kwargs)
        loss_fn.set_progress(1.0, 1)  # DKD: warm-up over, its full distillation term
        logits = student(x)
        logits.retain_grad()
        loss = loss_fn({"logits": logits}, teacher, labels)
        loss.backward()
        per_sample = (logits.grad * len(idx)).norm(dim=1)
        weights = torch.sqrt(
            sum((p.grad**2).sum() for p in student.parameters() if p.grad is not None)
        )
        out[key] = {
            "loss": round(float(loss), 4),
            "logit_grad_norm_mean": round(float(per_sample.mean()), 4),
            "weight_grad_norm": round(float(weights), 4),
        }
    return out


if __name__ == "__main__":
    main()
