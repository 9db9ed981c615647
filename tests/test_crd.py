"""CRD: against a NumPy reference over two steps, its memory banks, negatives, inputs, learning.

`np_crd_step` is written from the paper's and RepDistiller's formulas with loops, in float64,
and shares no code with onnxkd; tests/test_losses.py takes its golden case from here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from onnxkd.distill.losses import LossConfigError, LossInputError, MissingOutputError, build_loss

EPS = 1e-7
RTOL = 1e-5


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().astype(np.float64)


# --- NumPy reference ----------------------------------------------------------------------


def np_embed(f, weight, bias):
    if f.ndim == 4:
        f = f.mean(axis=(2, 3))
    e = f @ weight.T + bias
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def np_nce(p, n):
    """RepDistiller's ContrastLoss on (B, K + 1) normalised scores, column 0 the positive."""
    k = p.shape[1] - 1
    total = 0.0
    for row in p:
        total += np.log(row[0] / (row[0] + k / n + EPS))
        total += sum(np.log((k / n) / (x + k / n + EPS)) for x in row[1:])
    return -total / len(p)


def np_crd_step(s, t, idx, contrast, heads, memories, z, n, tau=0.07, m=0.5, weight=0.8):
    """One training step: (loss, new (mem_s, mem_t), (z_s, z_t)); z = None sets them here.

    `heads` is ((W_s, b_s), (W_t, b_t)); `memories` is (mem_s, mem_t), left unchanged.
    """
    (w_s, b_s), (w_t, b_t) = heads
    mem_s, mem_t = (mem.copy() for mem in memories)
    e_s, e_t = np_embed(s, w_s, b_s), np_embed(t, w_t, b_t)
    out_s = np.array(
        [[np.exp(mem_t[j] @ e_s[i] / tau) for j in row] for i, row in enumerate(contrast)]
    )
    out_t = np.array(
        [[np.exp(mem_s[j] @ e_t[i] / tau) for j in row] for i, row in enumerate(contrast)]
    )
    if z is None:
        z = (out_s.mean() * n, out_t.mean() * n)
    loss = weight * (np_nce(out_s / z[0], n) + np_nce(out_t / z[1], n))
    for i, sample in enumerate(idx):
        for mem, e in ((mem_s, e_s), (mem_t, e_t)):
            moved = m * mem[sample] + (1 - m) * e[i]
            mem[sample] = moved / np.linalg.norm(moved)
    return loss, (mem_s, mem_t), z


def _set_state(loss, heads, memories):
    with torch.no_grad():
        for head, (w, b) in zip((loss.embed_student, loss.embed_teacher), heads, strict=True):
            head.weight.copy_(w)
            head.bias.copy_(b)
        loss.memory_student.copy_(memories[0])
        loss.memory_teacher.copy_(memories[1])


# The golden case of tests/test_losses.py: with N = 2 the one negative of each anchor is the
# other sample, so the reference needs no draw of its own.
GOLDEN_HEADS = (
    (randn(4, 5, seed=20), randn(4, seed=21)),
    (randn(4, 3, seed=22), randn(4, seed=23)),
)
GOLDEN_MEMORIES = (0.5 * randn(2, 4, seed=24), 0.5 * randn(2, 4, seed=25))


def crd_golden_case():
    loss = build_loss("crd", teacher_key="stage3", num_samples=2, feat_dim=4)
    loss.materialize((2, 5), (2, 3, 2, 2))
    _set_state(loss, GOLDEN_HEADS, GOLDEN_MEMORIES)
    student = {"embedding": randn(2, 5, seed=26)}
    teacher = {"stage3": randn(2, 3, 2, 2, seed=27), "sample_index": torch.tensor([1, 0])}
    return loss, student, teacher, None


def crd_golden_reference():
    heads = tuple((_np(w), _np(b)) for w, b in GOLDEN_HEADS)
    s, t = _np(randn(2, 5, seed=26)), _np(randn(2, 3, 2, 2, seed=27))
    memories = tuple(_np(m) for m in GOLDEN_MEMORIES)
    contrast = np.array([[1, 0], [0, 1]])
    return np_crd_step(s, t, [1, 0], contrast, heads, memories, None, n=2)[0]


# --- the loss against the reference -------------------------------------------------------

N = 10


def _inputs(idx, seed):
    student = randn(len(idx), 5, 3, 3, seed=seed)
    teacher = {"feat": randn(len(idx), 6, 2, 2, seed=seed + 1), "sample_index": torch.tensor(idx)}
    return student, teacher


def _crd(**kwargs):
    return build_loss("crd", teacher_key="feat", num_samples=N, **kwargs)


def test_matches_numpy_over_two_steps():
    """Step 1 fixes Z, step 2 reuses it; samples 7 and 3 are in both, so step 2 contrasts
    against rows that step 1 moved."""
    loss = _crd(feat_dim=3, nce_k=5, nce_t=0.1, nce_m=0.7, weight=1.5)
    loss.materialize((1, 5, 3, 3), (1, 6, 2, 2))
    heads = ((randn(3, 5, seed=1), randn(3, seed=2)), (randn(3, 6, seed=3), randn(3, seed=4)))
    memories = (F.normalize(randn(N, 3, seed=5), dim=1), 0.3 * randn(N, 3, seed=6))
    _set_state(loss, heads, memories)
    ref_heads = tuple((_np(w), _np(b)) for w, b in heads)
    ref_memories, z = tuple(_np(m) for m in memories), None
    for step, idx in enumerate([[3, 7, 0, 9], [7, 2, 3, 5]]):
        student, teacher = _inputs(idx, seed=10 + 2 * step)
        value = loss({"embedding": student}, teacher, None)
        contrast = loss.last_contrast_indices.numpy()
        assert contrast.shape == (4, 6) and contrast.dtype == np.int64
        expected, ref_memories, z = np_crd_step(
            _np(student),
            _np(teacher["feat"]),
            idx,
            contrast,
            ref_heads,
            ref_memories,
            z,
            n=N,
            tau=0.1,
            m=0.7,
            weight=1.5,
        )
        assert float(value.detach()) == pytest.approx(expected, rel=RTOL)
        assert [float(loss.z_student), float(loss.z_teacher)] == pytest.approx(z, rel=RTOL)
        np.testing.assert_allclose(_np(loss.memory_student), ref_memories[0], atol=1e-6)
        np.testing.assert_allclose(_np(loss.memory_teacher), ref_memories[1], atol=1e-6)


def test_heads_are_built_at_the_first_forward_from_the_shapes():
    loss = _crd(feat_dim=7)
    assert loss.embed_student is None and not list(loss.parameters())
    assert loss.nce_k == N - 1  # 4096 asked, clipped to the other samples
    student, teacher = _inputs([0, 1, 2], seed=0)
    loss({"embedding": student}, teacher, None)
    assert loss.embed_student.weight.shape == (7, 5)  # pooled over H, W: 5 channels
    assert loss.embed_teacher.weight.shape == (7, 6)
    assert loss.last_contrast_indices.shape == (3, N)
    with pytest.raises(LossInputError, match=r"heads Linear\(in_features=5.*do not fit"):
        loss({"embedding": randn(3, 4, seed=0)}, teacher, None)


def test_memory_moves_only_at_the_batch_rows_and_only_in_training():
    loss = _crd(feat_dim=4)
    before = (loss.memory_student.clone(), loss.memory_teacher.clone())
    student, teacher = _inputs([2, 5, 6], seed=0)
    loss.eval()
    loss({"embedding": student}, teacher, None)
    assert torch.equal(loss.memory_student, before[0])
    assert torch.equal(loss.memory_teacher, before[1])
    loss.train()
    loss({"embedding": student}, teacher, None)
    for memory, old in zip((loss.memory_student, loss.memory_teacher), before, strict=True):
        moved = (memory != old).any(dim=1)
        assert moved.nonzero().flatten().tolist() == [2, 5, 6]
        assert memory[[2, 5, 6]].norm(dim=1) == pytest.approx(torch.ones(3), rel=1e-6)


def test_negatives_skip_the_anchor_cover_the_rest_and_follow_the_seed():
    def draws(seed):
        loss = _crd(feat_dim=4, seed=seed)
        idx = list(range(N))
        rows = []
        for step in range(20):
            student, teacher = _inputs(idx, seed=step)
            loss({"embedding": student}, teacher, None)
            rows.append(loss.last_contrast_indices)
        return torch.stack(rows)  # (steps, B, K + 1)

    contrast = draws(seed=0)
    anchors = torch.arange(N)
    assert (contrast[:, :, 0] == anchors).all()
    assert (contrast[:, :, 1:] != anchors[:, None]).all()
    for i in range(N):  # 180 draws of each anchor's negatives reach every other sample
        assert set(contrast[:, i, 1:].flatten().tolist()) == set(range(N)) - {i}
    assert torch.equal(draws(seed=0), contrast)
    assert not torch.equal(draws(seed=1), contrast)


def test_gradients_reach_the_student_and_both_heads_but_not_the_teacher():
    loss = _crd(feat_dim=4)
    student, teacher = _inputs([1, 4, 8], seed=0)
    student.requires_grad_()
    teacher["feat"].requires_grad_()
    loss({"embedding": student}, teacher, None).backward()
    assert student.grad.abs().sum() > 0
    for head in (loss.embed_student, loss.embed_teacher):
        assert head.weight.grad.abs().sum() > 0 and head.bias.grad.abs().sum() > 0
    assert teacher["feat"].grad is None


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"sample_index": torch.tensor([0, 1, N])}, LossInputError, r"must lie in \[0, "),
        ({"sample_index": torch.tensor([-1, 1, 2])}, LossInputError, "got -1..2: is num_samples"),
        ({"sample_index": torch.tensor([0, 1])}, LossInputError, r"'sample_index' \(2,\)"),
        ({"feat": randn(2, 6, 2, 2, seed=0)}, LossInputError, r"teacher \(2, 6, 2, 2\)"),
        ({"sample_index": torch.tensor([0.0, 1, 2])}, LossInputError, "integer sample indices"),
        ({"feat": randn(3, 6, 2, seed=0)}, LossInputError, r"need \(B, D\) or \(B, C, H, W\)"),
        ({"sample_index": None}, MissingOutputError, r"teacher inputs given are \['feat'\]"),
    ],
)
def test_bad_inputs_say_what_is_wrong(change, error, message):
    student, teacher = _inputs([0, 1, 2], seed=0)
    teacher = {k: v for k, v in {**teacher, **change}.items() if v is not None}
    with pytest.raises(error, match=message):
        _crd()({"embedding": student}, teacher, None)


def test_missing_student_embedding_and_bad_arguments():
    _, teacher = _inputs([0, 1], seed=0)
    with pytest.raises(MissingOutputError, match=r"student output 'embedding'.*\['logits'\]"):
        _crd()({"logits": randn(2, 3, seed=0)}, teacher, None)
    with pytest.raises(LossConfigError, match="needs argument num_samples"):
        build_loss("crd", teacher_key="feat")
    with pytest.raises(LossConfigError, match="num_samples must be >= 2, got 1"):
        build_loss("crd", teacher_key="feat", num_samples=1)
    with pytest.raises(LossConfigError, match=r"nce_m must be in \[0, 1\), got 1"):
        _crd(nce_m=1)


def test_keys_config_and_checkpoint_round_trip():
    loss = _crd(student_key="head.pool", feat_dim=4, seed=3)
    assert (loss.student_keys, loss.teacher_keys) == (("head.pool",), ("feat", "sample_index"))
    config = loss.config()
    assert config["name"] == "crd" and config["nce_k"] == 4096
    rebuilt = build_loss(**config)
    assert rebuilt.config() == config
    assert torch.equal(rebuilt.memory_student, loss.memory_student)  # seeded initial banks
    student, teacher = _inputs([0, 3], seed=0)
    loss({"head.pool": student}, teacher, None)
    restored = build_loss(**config)
    restored.materialize(student.shape, teacher["feat"].shape)
    restored.load_state_dict(loss.state_dict())
    assert float(restored.z_student) == float(loss.z_student) > 0  # Z is not reset on resume
    assert torch.equal(restored.memory_teacher, loss.memory_teacher)


def test_autocast_leaves_the_contrast_in_float32():
    student, teacher = _inputs([0, 3, 4], seed=0)
    loss, twin = _crd(), _crd()  # the same seed: the same banks and negatives
    for each in (loss, twin):
        each.materialize(student.shape, teacher["feat"].shape)
    twin.load_state_dict(loss.state_dict())  # and the same heads
    expected = float(loss({"embedding": student}, teacher, None).detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = twin({"embedding": student}, teacher, None)
    assert value.dtype == torch.float32
    assert float(value.detach()) == pytest.approx(expected, rel=1e-6)


def test_a_student_embedding_table_learns_to_find_its_teacher_sample():
    """64 samples, random 16-d teacher embeddings, a learnable 8-d student embedding per sample.

    After 200 Adam steps (lr 0.05, batches of 16) each student embedding's nearest teacher
    embedding (cosine, through the heads) is its own sample's: over seeds 0-49 every run
    reached 64/64 and its loss fell to at most 0.12 of its start; at lr 0.02, at least
    58/64. The bars below (58/64, 0.3) leave that margin. Before training it is chance (1/64).
    """
    n = 64
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(n, 16, generator=g)
    table = torch.nn.Parameter(torch.randn(n, 8, generator=g))
    loss = build_loss("crd", teacher_key="feat", num_samples=n, feat_dim=16)
    loss.materialize((1, 8), (1, 16))

    def retrieved() -> float:
        with torch.no_grad():
            e_s = F.normalize(loss.embed_student(table), dim=1)
            e_t = F.normalize(loss.embed_teacher(teacher), dim=1)
            return float(((e_s @ e_t.T).argmax(dim=1) == torch.arange(n)).float().mean())

    assert retrieved() < 0.2
    optimizer = torch.optim.Adam([table, *loss.parameters()], lr=0.05)
    values = []
    for _ in range(200):
        idx = torch.randperm(n, generator=g)[:16]
        value = loss({"embedding": table[idx]}, {"feat": teacher[idx], "sample_index": idx}, None)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        values.append(float(value.detach()))
    assert np.mean(values[-10:]) < 0.3 * np.mean(values[:10])
    assert retrieved() >= 58 / 64
