"""Distillation losses: golden values, the identities they must satisfy, the key contract.

Golden values were computed once by the straightforward NumPy references below (loops and
textbook formulas, no code from onnxkd) and are stored as literals; the references stay here so
that a reader can see where each number came from, and are checked against the literals too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_crd import crd_golden_case, crd_golden_reference

from onnxkd.distill.losses import (
    LOSSES,
    CompositeLoss,
    LossConfigError,
    MissingOutputError,
    build_loss,
)
from onnxkd.errors import OnnxkdError

B, C = 4, 5
LABELS = [0, 3, 1, 4]
RTOL = 1e-5


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def logit_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return randn(B, C, seed=0), 2 * randn(B, C, seed=1), torch.tensor(LABELS)


def topk_parts(teacher: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """What a top-k cache hands over: top-k log-probs at T=1, their classes, residual mass."""
    log_p = F.log_softmax(teacher, dim=1)
    values, indices = log_p.topk(k, dim=1)
    residual = 1 - values.exp().sum(dim=1)
    return {"topk_values": values, "topk_indices": indices, "residual": residual}


def uniform_rebuild(parts: dict[str, torch.Tensor], c: int) -> torch.Tensor:
    """Full log-probs with the residual spread evenly, as the cache reader rebuilds them."""
    values, indices, residual = parts["topk_values"], parts["topk_indices"], parts["residual"]
    fill = torch.log(residual.clamp_min(1e-12) / (c - values.shape[1]))
    return fill[:, None].repeat(1, c).scatter(1, indices, values)


# --- NumPy references ---------------------------------------------------------------------


def np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_ce(s, y, eps=0.0):
    c = s.shape[1]
    total = 0.0
    for row, label in zip(np_log_softmax(s), y, strict=True):
        target = np.full(c, eps / c)
        target[label] += 1 - eps
        total -= (target * row).sum()
    return total / len(s)


def np_kl(p, q):
    """Batchmean KL(p || q) from probabilities."""
    return sum((pi * np.log(pi / qi)).sum() for pi, qi in zip(p, q, strict=True)) / len(p)


def np_kd(s, t, y, alpha, T):
    p = np.exp(np_log_softmax(t / T))
    q = np.exp(np_log_softmax(s / T))
    return (1 - alpha) * np_ce(s, y) + alpha * T * T * np_kl(p, q)


def np_kd_topk(s, values, indices, residual, y, alpha, T):
    c, k = s.shape[1], values.shape[1]
    total = 0.0
    for srow, v, idx, r in zip(s, values, indices, residual, strict=True):
        q = np.exp(srow / T) / np.exp(srow / T).sum()
        q_bins = np.append(q[idx], 1 - q[idx].sum())
        t_bins = np.append(np.exp(v / T), (c - k) * (r / (c - k)) ** (1 / T))
        t_bins /= t_bins.sum()
        total += (t_bins * np.log(t_bins / q_bins)).sum()
    return (1 - alpha) * np_ce(s, y) + alpha * T * T * total / len(s)


def np_dkd(s, t, y, alpha, beta, T, ce_weight):
    p = np.exp(np_log_softmax(t / T))
    q = np.exp(np_log_softmax(s / T))
    tckd = nckd = 0.0
    for pi, qi, label in zip(p, q, y, strict=True):
        pb = np.array([pi[label], 1 - pi[label]])
        qb = np.array([qi[label], 1 - qi[label]])
        tckd += (pb * np.log(pb / qb)).sum()
        others = np.arange(len(pi)) != label
        pn, qn = pi[others] / pi[others].sum(), qi[others] / qi[others].sum()
        nckd += (pn * np.log(pn / qn)).sum()
    kd = (alpha * tckd + beta * nckd) / len(s) * T * T
    return ce_weight * np_ce(s, y) + kd


def np_pool(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Average pooling to (h, w) when the sizes divide: block means."""
    n, c, hh, ww = x.shape
    return x.reshape(n, c, h, hh // h, w, ww // w).mean(axis=(3, 5))


def np_fitnets(s, t, weight, bias):
    s = np_pool(s, *t.shape[2:])
    out = np.einsum("oc,nchw->nohw", weight, s) + bias[None, :, None, None]
    return ((out - t) ** 2).mean()


def np_at(pairs):
    total = 0.0
    for s, t in pairs:
        maps = [(np.abs(f) ** 2).mean(axis=1, keepdims=True) for f in (s, t)]
        h = min(m.shape[2] for m in maps)
        maps = [np_pool(m, h, h).reshape(len(m), -1) for m in maps]
        a_s, a_t = (m / np.linalg.norm(m, axis=1, keepdims=True) for m in maps)
        total += ((a_s - a_t) ** 2).mean()
    return 1000 * total / len(pairs)


def np_rkd(s, t):
    def dist(e):
        d = np.array([[np.linalg.norm(a - b) for b in e] for a in e])
        return d / d[d > 0].mean()

    def angles(e):
        out = []
        for j in range(len(e)):
            for i in range(len(e)):
                for k in range(len(e)):
                    u, v = e[i] - e[j], e[k] - e[j]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out.append(0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv))
        return np.array(out)

    def smooth_l1(a, b):
        x = np.abs(a - b)
        return np.where(x < 1, 0.5 * x**2, x - 0.5).mean()

    return 25 * smooth_l1(dist(s), dist(t)) + 50 * smooth_l1(angles(s), angles(t))


# --- golden values ------------------------------------------------------------------------


def _logit_case(name, **kwargs):
    s, t, y = logit_inputs()
    return build_loss(name, **kwargs), {"logits": s}, {"logits": t}, y


def _topk_case(temperature):
    s, t, y = logit_inputs()
    loss = build_loss("kd_topk", alpha=0.9, temperature=temperature)
    return loss, {"logits": s}, topk_parts(t, 2), y


def _fitnets_case():
    loss = build_loss("fitnets", student_key="layer1", teacher_key="stage2")
    adapter = loss.materialize((2, 3, 4, 4), (2, 6, 2, 2))
    with torch.no_grad():
        adapter.weight.copy_(randn(6, 3, seed=4).view(6, 3, 1, 1))
        adapter.bias.copy_(randn(6, seed=5))
    student = {"layer1": randn(2, 3, 4, 4, seed=2)}
    return loss, student, {"stage2": randn(2, 6, 2, 2, seed=3)}, torch.tensor([0, 1])


def _at_pairs():
    return [
        (randn(2, 3, 8, 8, seed=6), randn(2, 5, 4, 4, seed=7)),
        (randn(2, 4, 4, 4, seed=8), randn(2, 6, 4, 4, seed=9)),
    ]


def _at_case():
    (s1, t1), (s2, t2) = _at_pairs()
    loss = build_loss("at", pairs=[("l1", "f1"), ("l2", "f2")])
    return loss, {"l1": s1, "l2": s2}, {"f1": t1, "f2": t2}, torch.tensor([0, 1])


def _rkd_case():
    loss = build_loss("rkd")
    student, teacher = randn(4, 6, seed=10), randn(4, 8, seed=11)
    return loss, {"embedding": student}, {"embedding": teacher}, torch.tensor(LABELS)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.numpy().astype(np.float64)


def _ref_topk(temperature):
    s, t, y = logit_inputs()
    parts = topk_parts(t, 2)
    return np_kd_topk(
        _np(s),
        _np(parts["topk_values"]),
        parts["topk_indices"].numpy(),
        _np(parts["residual"]),
        y.numpy(),
        0.9,
        temperature,
    )


def _ref_fitnets():
    w, b = _np(randn(6, 3, seed=4)), _np(randn(6, seed=5))
    return np_fitnets(_np(randn(2, 3, 4, 4, seed=2)), _np(randn(2, 6, 2, 2, seed=3)), w, b)


S, T, Y = (_np(x) if x.is_floating_point() else x.numpy() for x in logit_inputs())

GOLDEN = {
    "ce": (
        lambda: _logit_case("ce"),
        lambda: np_ce(S, Y),
        2.378320503683687,
    ),
    "ce_label_smoothing": (
        lambda: _logit_case("ce", label_smoothing=0.1),
        lambda: np_ce(S, Y, 0.1),
        2.335168068485261,
    ),
    "kd": (
        lambda: _logit_case("kd", alpha=0.9, temperature=4.0),
        lambda: np_kd(S, T, Y, 0.9, 4.0),
        1.6053629113324293,
    ),
    "kd_topk_T1": (lambda: _topk_case(1.0), lambda: _ref_topk(1.0), 1.1644365048693066),
    "kd_topk_T4": (lambda: _topk_case(4.0), lambda: _ref_topk(4.0), 1.2593930874914754),
    "dkd": (
        lambda: _logit_case("dkd"),
        lambda: np_dkd(S, T, Y, 1.0, 8.0, 4.0, 1.0),
        12.55488813677034,
    ),
    "fitnets": (_fitnets_case, _ref_fitnets, 3.0121453026691536),
    "at": (
        _at_case,
        lambda: np_at([(_np(s), _np(t)) for s, t in _at_pairs()]),
        25.04738902283754,
    ),
    "rkd": (
        _rkd_case,
        lambda: np_rkd(_np(randn(4, 6, seed=10)), _np(randn(4, 8, seed=11))),
        0.4591254777120511,
    ),
    # CRD needs num_samples and the batch's sample indices; its case and NumPy reference
    # live in tests/test_crd.py, whose N = 2 makes the one negative of each anchor the other.
    "crd": (crd_golden_case, crd_golden_reference, 15.457440764034613),
}


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_golden_value(case):
    build, reference, expected = GOLDEN[case]
    loss, student, teacher, labels = build()
    student = {k: v.clone().requires_grad_() for k, v in student.items()}
    value = loss(student, teacher, labels)
    assert value.shape == ()
    assert float(value.detach()) == pytest.approx(expected, rel=RTOL)
    assert reference() == pytest.approx(expected, rel=1e-9)
    value.backward()
    assert all(torch.isfinite(v.grad).all() for v in student.values())


def test_every_registered_loss_has_a_golden_case():
    """Adding a loss means adding its golden case above: this fails until one exists."""
    covered = {GOLDEN[case][0]()[0].name for case in GOLDEN}
    assert set(LOSSES.names()) <= covered, sorted(set(LOSSES.names()) - covered)


# --- registry, construction and the key contract -------------------------------------------


def test_registry_names():
    assert {"ce", "kd", "kd_topk", "dkd", "fitnets", "at", "rkd"} <= set(LOSSES.names())


@pytest.mark.parametrize(
    ("name", "kwargs", "student_keys", "teacher_keys"),
    [
        ("ce", {}, ("logits",), ()),
        ("kd", {"teacher_key": "probs_log"}, ("logits",), ("probs_log",)),
        ("kd_topk", {}, ("logits",), ("topk_values", "topk_indices", "residual")),
        ("dkd", {"student_key": "head.fc"}, ("head.fc",), ("logits",)),
        (
            "fitnets",
            {"student_key": "layer2", "teacher_key": "/l2/Relu"},
            ("layer2",),
            ("/l2/Relu",),
        ),
        ("at", {"pairs": [["layer3", "s3"]]}, ("layer3",), ("s3",)),
        ("rkd", {}, ("embedding",), ("embedding",)),
    ],
)
def test_keys_and_config(name, kwargs, student_keys, teacher_keys):
    loss = build_loss(name, **kwargs)
    assert (loss.student_keys, loss.teacher_keys) == (student_keys, teacher_keys)
    config = loss.config()
    assert config["name"] == name
    assert build_loss(**config).config() == config


def test_build_loss_errors_name_the_arguments():
    with pytest.raises(LossConfigError, match=r"'kd' has no argument T; its arguments are alpha"):
        build_loss("kd", T=4)
    with pytest.raises(LossConfigError, match="needs argument student_key, teacher_key"):
        build_loss("fitnets")
    with pytest.raises(LossConfigError, match=r"alpha must be in \[0, 1\], got 1.5"):
        build_loss("kd", alpha=1.5)
    with pytest.raises(LossConfigError, match=r"one or more \(student_key, teacher_key\) pairs"):
        build_loss("at", pairs=["layer3:s3"])
    with pytest.raises(OnnxkdError, match="did you mean kd"):
        build_loss("kdd")


def test_missing_key_names_key_and_keys_present():
    s, t, y = logit_inputs()
    loss = build_loss("kd")
    with pytest.raises(MissingOutputError) as err:
        loss({"logits": s}, {"probabilities": t, "label": y}, y)
    assert isinstance(err.value, OnnxkdError)
    assert str(err.value).startswith(
        "loss 'kd' reads teacher output 'logits', but the teacher outputs given are "
        "['label', 'probabilities']"
    )
    with pytest.raises(MissingOutputError, match=r"student output 'layer1'.*\['fc'\]"):
        build_loss("fitnets", student_key="layer1", teacher_key="f")({"fc": s}, {"f": t}, y)


# --- KD and its top-k form ------------------------------------------------------------------


def test_kd_with_alpha_zero_is_ce():
    s, t, y = logit_inputs()
    kd = build_loss("kd", alpha=0.0)({"logits": s}, {"logits": t}, y)
    ce = build_loss("ce")({"logits": s}, {}, y)
    assert float(kd) == pytest.approx(float(ce), rel=RTOL)


def test_kd_is_flat_where_student_matches_teacher():
    s, _, y = logit_inputs()
    student = s.clone().requires_grad_()
    value = build_loss("kd", alpha=1.0)({"logits": student}, {"logits": s}, y)
    value.backward()
    assert abs(float(value.detach())) < 1e-6
    assert student.grad.abs().max() < 1e-6


def test_kd_takes_log_probs_and_half_precision_teachers():
    s, t, y = logit_inputs()
    loss = build_loss("kd")
    expected = float(loss({"logits": s}, {"logits": t}, y))
    log_probs = F.log_softmax(t, dim=1)
    assert float(loss({"logits": s}, {"logits": log_probs}, y)) == pytest.approx(expected, rel=RTOL)
    half = float(loss({"logits": s}, {"logits": t.half()}, y))
    assert half == pytest.approx(expected, rel=1e-2)


def _kd_on_rebuilt(s, parts, y, temperature):
    rebuilt = uniform_rebuild(parts, s.shape[1])
    kd = build_loss("kd", alpha=0.9, temperature=temperature)
    return kd({"logits": s}, {"logits": rebuilt}, y)


def _kd_topk(s, parts, y, temperature):
    return build_loss("kd_topk", alpha=0.9, temperature=temperature)({"logits": s}, parts, y)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_topk_is_kd_when_the_rest_is_one_class(temperature):
    s, t, y = logit_inputs()
    parts = topk_parts(t, C - 1)
    expected = float(_kd_on_rebuilt(s, parts, y, temperature))
    assert float(_kd_topk(s, parts, y, temperature)) == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("temperature", [1.0, 2.5, 4.0])
def test_kd_topk_is_kd_on_uniform_rebuild_when_student_is_flat_on_the_rest(temperature):
    s, t, y = logit_inputs()
    parts = topk_parts(t, 2)
    rest = torch.ones_like(s, dtype=torch.bool).scatter(1, parts["topk_indices"], False)
    s = torch.where(rest, s.mean(dim=1, keepdim=True), s)
    expected = float(_kd_on_rebuilt(s, parts, y, temperature))
    assert float(_kd_topk(s, parts, y, temperature)) == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_topk_gap_to_kd_on_uniform_rebuild_is_the_within_rest_kl(temperature):
    s, t, y = logit_inputs()
    parts = topk_parts(t, 2)
    full = float(_kd_on_rebuilt(s, parts, y, temperature))
    binned = float(_kd_topk(s, parts, y, temperature))
    # teacher's tempered mass in the rest bin, and the student's distribution within the rest
    p_rest = F.softmax(uniform_rebuild(parts, C) / temperature, dim=1)
    rest = torch.ones_like(s, dtype=torch.bool).scatter(1, parts["topk_indices"], False)
    p_rest = (p_rest * rest).sum(dim=1)
    q = F.softmax(s / temperature, dim=1)[rest].view(B, C - 2)
    q = q / q.sum(dim=1, keepdim=True)
    within = (-math.log(C - 2) - q.log()).mean(dim=1)  # KL(uniform || q)
    gap = 0.9 * temperature**2 * float((p_rest * within).mean())
    assert gap > 0
    assert full - binned == pytest.approx(gap, rel=1e-4)


def test_kd_topk_with_every_class_is_kd():
    s, t, y = logit_inputs()
    parts = topk_parts(t, C)
    expected = float(build_loss("kd")({"logits": s}, {"logits": t}, y))
    assert float(_kd_topk(s, parts, y, 4.0)) == pytest.approx(expected, rel=RTOL)


def test_kd_topk_rejects_mismatched_parts():
    s, t, y = logit_inputs()
    parts = topk_parts(t, 2)
    parts["residual"] = parts["residual"][:2]
    with pytest.raises(OnnxkdError, match="residual"):
        _kd_topk(s, parts, y, 4.0)


# --- DKD ------------------------------------------------------------------------------------


def test_dkd_with_matched_weights_is_kd():
    """TCKD + (1 − p_target)·NCKD is the full KL (the paper's decomposition), per sample."""
    s, t, y = (x[:1] for x in logit_inputs())
    p_target = float(F.softmax(t / 4.0, dim=1)[0, y[0]])
    dkd = build_loss("dkd", alpha=1.0, beta=1 - p_target, ce_weight=0.0)
    kd = build_loss("kd", alpha=1.0)
    expected = float(kd({"logits": s}, {"logits": t}, y))
    assert float(dkd({"logits": s}, {"logits": t}, y)) == pytest.approx(expected, rel=RTOL)


def test_dkd_warmup_ramps_the_distillation_part_step_by_step():
    s, t, y = logit_inputs()
    student, teacher = {"logits": s}, {"logits": t}
    ce = float(build_loss("ce")(student, {}, y))
    kd_part = float(build_loss("dkd", ce_weight=0.0)(student, teacher, y))
    loss = build_loss("dkd", warmup_epochs=4)
    composite = CompositeLoss([(1.0, loss)])
    for done, factor in [(0.5, 0.125), (1, 0.25), (2, 0.5), (4, 1.0), (10, 1.0)]:
        composite.set_progress(done, 30)
        expected = ce + factor * kd_part
        assert float(composite(student, teacher, y)) == pytest.approx(expected, rel=RTOL)


def test_dkd_default_warmup_is_the_papers_share_of_the_schedule():
    """mdistiller warms up over 20 of 240 epochs; a run of 30 epochs warms up over 2.5."""
    loss = build_loss("dkd")
    loss.set_progress(1.25, 30)
    assert loss.warmup_factor == pytest.approx(0.5)
    loss.set_progress(1.25, 240)
    assert loss.warmup_factor == pytest.approx(1.25 / 20)
    off = build_loss("dkd", warmup_epochs=0)
    off.set_progress(0.01, 30)
    assert off.warmup_factor == 1.0


def _logits64(seed: int, rows: int = 16, classes: int = 10, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(rows, classes, generator=g, dtype=torch.float64) * scale
    t = torch.randn(rows, classes, generator=g, dtype=torch.float64) * scale
    return s, t, torch.randint(0, classes, (rows,), generator=g)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kl_is_tckd_plus_one_minus_teacher_target_prob_times_nckd_per_sample(temperature):
    """The paper's Eq. (5), row by row, in float64: so DKD with α = 1 and a per-sample
    β = 1 − p_t,y is classic KD (α = 1) to float precision."""
    from onnxkd.distill.losses.logits import decoupled_kl

    s, t, y = _logits64(0)
    tckd, nckd = decoupled_kl(s, t, y, temperature)
    p = torch.softmax(t / temperature, 1)
    beta = 1 - p[torch.arange(len(y)), y]
    kl = (p * (p.log() - torch.log_softmax(s / temperature, 1))).sum(1)
    assert torch.allclose(tckd + beta * nckd, kl, rtol=1e-12, atol=1e-12)
    kd = build_loss("kd", alpha=1.0, temperature=temperature)({"logits": s}, {"logits": t}, y)
    dkd_per_sample_beta = (tckd + beta * nckd).mean() * temperature**2
    assert float(dkd_per_sample_beta) == pytest.approx(float(kd), rel=1e-12)
    # and the module is exactly these terms at a scalar β
    dkd = build_loss("dkd", beta=2.0, ce_weight=0.0, temperature=temperature, warmup_epochs=0)
    expected = (tckd.mean() + 2.0 * nckd.mean()) * temperature**2
    assert float(dkd({"logits": s}, {"logits": t}, y)) == pytest.approx(float(expected), rel=1e-12)


def test_dkd_is_zero_when_the_student_is_the_teacher():
    s, _, y = _logits64(1)
    dkd = build_loss("dkd", ce_weight=0.0, warmup_epochs=0)
    assert float(dkd({"logits": s}, {"logits": s.clone()}, y)) == pytest.approx(0.0, abs=1e-12)


def test_dkd_gradients_stay_finite_at_saturated_logits():
    """A confident student (logits of ±1e4) or teacher: the binary terms are formed in log
    space, so neither the loss nor its gradient over- or underflows."""
    s, t, y = (x.float() for x in _logits64(2, scale=1.0))
    y = y.long()
    s = (s * 1e4).requires_grad_()
    for teacher in (t * 1e4, t):
        value = build_loss("dkd", warmup_epochs=0)({"logits": s}, {"logits": teacher}, y)
        (grad,) = torch.autograd.grad(value, s)
        assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_dkd_when_the_teacher_is_wrong_on_the_label():
    """The target class is the label, not the teacher's argmax: for a teacher sure of another
    class, NCKD pulls the student's non-target mass onto that class (where the teacher is
    right, its non-target classes are even and a uniform student matches them), and TCKD
    pulls the student's label probability down to the teacher's; the value matches the
    reference."""
    from onnxkd.distill.losses.logits import decoupled_kl

    y = torch.tensor([0, 1])
    teacher = torch.tensor([[0.0, 8.0, 0.0, 0.0], [0.0, 8.0, 0.0, 0.0]], dtype=torch.float64)
    student = torch.zeros(2, 4, dtype=torch.float64)
    tckd, nckd = decoupled_kl(student, teacher, y, 4.0)
    assert nckd[0] > 0.1 and float(nckd[1]) == pytest.approx(0.0, abs=1e-12)
    assert tckd[0] > 0
    dkd = build_loss("dkd", warmup_epochs=0)
    got = float(dkd({"logits": student}, {"logits": teacher}, y))
    assert got == pytest.approx(np_dkd(student.numpy(), teacher.numpy(), y.numpy(), 1, 8, 4, 1))
    student.requires_grad_()
    (grad,) = torch.autograd.grad(
        build_loss("dkd", ce_weight=0.0, alpha=0.0, warmup_epochs=0)(
            {"logits": student}, {"logits": teacher}, y
        ),
        student,
    )
    # NCKD alone: for the first row the teacher's class 1 is a non-target class, so the
    # student is pushed up there (negative gradient) and never on the label
    assert grad[0, 1] < 0 and grad[0, 0] == 0


# --- feature losses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "adapter"),
    [
        ((2, 3, 8, 8), (2, 6, 4, 4), torch.nn.Conv2d),  # student pooled to 4x4
        ((2, 3, 4, 4), (2, 6, 8, 4), torch.nn.Conv2d),  # teacher pooled along H only
        ((2, 3, 4, 4), (2, 6), torch.nn.Linear),  # cache stored globally pooled features
        ((2, 3), (2, 7), torch.nn.Linear),
    ],
)
def test_fitnets_adapter_fits_shapes_and_learns(student_shape, teacher_shape, adapter):
    loss = build_loss("fitnets", student_key="s", teacher_key="t")
    assert loss.adapter is None and not list(loss.parameters())
    student = randn(*student_shape, seed=0).requires_grad_()
    value = loss({"s": student}, {"t": randn(*teacher_shape, seed=1)}, torch.tensor([0, 1]))
    assert isinstance(loss.adapter, adapter)
    assert tuple(loss.adapter.weight.shape[:2]) == (teacher_shape[1], student_shape[1])
    value.backward()
    assert loss.adapter.weight.grad.abs().sum() > 0 and student.grad.abs().sum() > 0


def test_fitnets_materialize_gives_parameters_before_any_forward():
    loss = build_loss("fitnets", student_key="s", teacher_key="t", weight=2.0)
    loss.materialize((1, 3, 4, 4), (1, 6, 4, 4))
    assert [p.shape for p in loss.parameters()] == [(6, 3, 1, 1), (6,)]
    with pytest.raises(OnnxkdError, match="does not fit student feature"):
        loss({"s": randn(2, 5, 4, 4, seed=0)}, {"t": randn(2, 6, 4, 4, seed=1)}, None)
    with pytest.raises(OnnxkdError, match="a 4-D teacher needs a 4-D student"):
        loss.materialize((1, 3), (1, 6, 4, 4))


def test_at_is_zero_for_identical_features_and_positive_otherwise():
    loss = build_loss("at", pairs=[("a", "x"), ("b", "y")])
    (s1, t1), (s2, _) = _at_pairs()
    same = loss({"a": s1, "b": s2}, {"x": s1, "y": s2}, None)
    assert float(same) == pytest.approx(0.0, abs=1e-9)
    assert float(loss({"a": s1, "b": s2}, {"x": t1, "y": 3 * s2}, None)) > 0
    with pytest.raises(OnnxkdError, match=r"needs \(B, C, H, W\) features"):
        loss({"a": s1.flatten(1), "b": s2}, {"x": t1, "y": s2}, None)


def test_rkd_is_invariant_to_scaling_the_embeddings():
    loss, student, teacher, y = _rkd_case()
    expected = float(loss(student, teacher, y))
    scaled = loss(
        {"embedding": 7.0 * student["embedding"]}, {"embedding": 0.1 * teacher["embedding"]}, y
    )
    assert float(scaled) == pytest.approx(expected, rel=RTOL)
    assert float(loss(student, {"embedding": 3.0 * student["embedding"]}, y)) < 1e-6


# --- composition ----------------------------------------------------------------------------


def test_composite_sums_weighted_terms_and_logs_them():
    s, t, y = logit_inputs()
    emb_s, emb_t = randn(B, 6, seed=10), randn(B, 8, seed=11)
    terms = [(1.0, build_loss("ce")), (0.5, build_loss("kd")), (2.0, build_loss("rkd"))]
    terms.append((0.25, build_loss("kd", temperature=2.0)))
    loss = CompositeLoss(terms)
    assert loss.student_keys == ("logits", "embedding")
    assert loss.teacher_keys == ("logits", "embedding")
    student, teacher = {"logits": s, "embedding": emb_s}, {"logits": t, "embedding": emb_t}
    total = float(loss(student, teacher, y))
    assert list(loss.last_terms) == ["ce", "kd", "rkd", "kd_1"]
    for (_, term), name in zip(terms, loss.last_terms, strict=True):
        assert loss.last_terms[name] == pytest.approx(float(term(student, teacher, y)), rel=RTOL)
    expected = sum(w * loss.last_terms[n] for (w, _), n in zip(terms, loss.last_terms, strict=True))
    assert total == pytest.approx(expected, rel=RTOL)
    assert [c["weight"] for c in loss.config()["terms"]] == [1.0, 0.5, 2.0, 0.25]
