"""Caching keeps peak RSS flat in the number of samples (a lazy source, a tiny teacher)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import hashlib, resource, sys
    from pathlib import Path
    import numpy as np
    import torch
    from onnxkd.data.source import DataRef
    from onnxkd.cache.build import CacheConfig, cache_teacher

    n, out = int(sys.argv[1]), Path(sys.argv[2])

    class LazySource:
        '''N synthetic 8x8 images made from their index on demand: nothing held in RAM.'''
        kind, sample_shape, dtype = "image", (8, 8, 1), np.dtype(np.uint8)
        label_names = tuple(str(i) for i in range(10))

        def __init__(self, n):
            self.n, self.ref = n, DataRef(f"synthetic-{n}")
            self.split_info = {"split": "train", "method": "synthetic"}

        def __len__(self):
            return self.n

        def read(self, idx):
            idx = np.asarray(idx, np.int64)
            px = (idx[:, None] * 2654435761 + np.arange(64) * 40503) % 17
            return px.astype(np.uint8).reshape(-1, 8, 8, 1), idx % 10

        def fingerprint(self):
            return hashlib.sha256(str(self.n).encode()).hexdigest()

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.onnx.export(net, torch.zeros(1, 1, 8, 8), str(out.parent / "tiny.onnx"), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}})
    del net
    import gc; gc.collect()
    cfg = CacheConfig(out.parent / "tiny.onnx", DataRef(f"synthetic-{n}"), out=out,
                      views=2, augment="crop", batch_size=1024, workdir=out.parent / "ws",
                      accept_low_accuracy=True)  # an untrained teacher: near chance
    cache_teacher(cfg, log=lambda s: None, source=LazySource(n))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
)


def peak_rss_mb(n: int, tmp_path) -> int:
    out = tmp_path / f"n{n}" / "cache"
    out.parent.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(n), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_rss_is_flat_in_the_number_of_samples(tmp_path):
    small = peak_rss_mb(20_000, tmp_path)
    large = peak_rss_mb(400_000, tmp_path)  # 20x the samples: 40 MB of targets, 51 MB of pixels
    assert large - small < 20, (small, large)
