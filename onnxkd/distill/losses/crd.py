"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

CRD asks the student's embedding of a sample to pick out the teacher's embedding of the same
sample among those of other samples, and the other way round. The negatives come from two
memory banks of embeddings seen in earlier steps, indexed by dataset sample, so one batch
contrasts against thousands of samples. The reference implementation is HobbitLong/RepDistiller
(`crd/criterion.py`, `crd/memory.py`); this one follows its formulas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onnxkd.distill.losses.base import (
    DistillLoss,
    MissingOutputError,
    check,
    check_arg,
    register,
)

EPS = 1e-7  # RepDistiller's, inside the NCE logarithms


@register("crd")
class CRD(DistillLoss):
    """Contrastive representation distillation (Tian et al., ICLR 2020): memory banks, NCE.

    Each side's feature ((B, C, H, W) maps are averaged over H, W first) goes through a
    learned linear head to `feat_dim` and is L2-normalised: e_s, e_t. Two memory banks of
    shape (N, feat_dim) hold one embedding per training sample: `memory_student` and
    `memory_teacher`. For anchor i the contrast indices are i (the positive) and K negatives
    drawn uniformly, with replacement, from the other N − 1 samples; labels are never read,
    so negatives may share i's class (the paper's instance-level pairs and RepDistiller's
    own draw when it is given no indices; its CIFAR loader instead takes negatives from other
    classes only). With the contrast rows j of the other side's memory,

        out_s[i, j] = exp(memory_teacher[j] · e_s[i] / τ) / Z_s
        out_t[i, j] = exp(memory_student[j] · e_t[i] / τ) / Z_t

    where Z = mean(exp(·/τ)) · N of the first batch, then fixed (buffers, so a checkpoint
    keeps them). With Pn = 1/N, each side's NCE loss is

        −(1/B) Σ_i [log(out[i,0] / (out[i,0] + K·Pn + ε)) + Σ_j>0 log(K·Pn / (out[i,j] + K·Pn + ε))]

    and the result is `weight · (loss_s + loss_t)`. After it, in training mode only, the
    batch's rows move towards the new embeddings: mem[i] ← normalize(m·mem[i] + (1 − m)·e_i)
    (a sample twice in one batch moves its row once, by one of its embeddings).

    The heads' input sizes are known only from the features, so they are created on the first
    forward (or by `materialize`): their parameters belong in the optimizer, so run one forward
    or `materialize(...)` before building it (and before loading a checkpoint). Negatives come
    from a CPU generator seeded with `seed`, so they do not depend on the device; the last ones
    drawn are in `last_contrast_indices`, (B, K + 1), column 0 the positives. Under DDP each
    process keeps its own banks, updated from its own batches only.

    Args:
        student_key: student embedding, (B, D) or (B, C, H, W).
        teacher_key: cached teacher feature, (B, D) or (B, C, H, W).
        num_samples: N, the number of training samples; the sample indices lie in [0, N).
        index_key: teacher input holding each sample's dataset index, int (B,).
        feat_dim: size of the embedding space of both heads and banks.
        nce_k: K, negatives per anchor (at most N − 1 are used).
        nce_t: τ, the temperature.
        nce_m: m, the momentum of the memory update.
        weight: multiplier of loss_s + loss_t (0.8, the paper's β with KD).
        seed: seeds the banks' initial values and the negatives.

    Example:
        >>> loss = CRD(teacher_key="pool", num_samples=1000, feat_dim=16)
        >>> loss.teacher_keys
        ('pool', 'sample_index')
        >>> heads = loss.materialize((1, 32), (1, 64, 4, 4))  # Linear(32, 16), Linear(64, 16)
    """

    takes_unlabeled = True  # reads no label

    def __init__(
        self,
        *,
        student_key: str = "embedding",
        teacher_key: str,
        num_samples: int,
        index_key: str = "sample_index",
        feat_dim: int = 128,
        nce_k: int = 4096,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        weight: float = 0.8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_arg(num_samples >= 2, self.name, f"num_samples must be >= 2, got {num_samples}")
        check_arg(feat_dim >= 1, self.name, f"feat_dim must be >= 1, got {feat_dim}")
        check_arg(nce_k >= 1, self.name, f"nce_k must be >= 1, got {nce_k}")
        check_arg(nce_t > 0, self.name, f"nce_t must be > 0, got {nce_t}")
        check_arg(0.0 <= nce_m < 1.0, self.name, f"nce_m must be in [0, 1), got {nce_m}")
        self.student_key, self.teacher_key, self.index_key = student_key, teacher_key, index_key
        self.student_keys, self.teacher_keys = (student_key,), (teacher_key, index_key)
        self.num_samples, self.feat_dim = int(num_samples), int(feat_dim)
        self.nce_k = min(int(nce_k), self.num_samples - 1)
        self.nce_t, self.nce_m, self.weight = float(nce_t), float(nce_m), float(weight)
        self.register_module("embed_student", None)
        self.register_module("embed_teacher", None)
        # One seeded stream: first the banks' initial values, then every draw of negatives.
        self._generator = torch.Generator().manual_seed(seed)
        stdv = 1.0 / math.sqrt(feat_dim / 3)  # RepDistiller's initial spread
        for side in ("student", "teacher"):
            bank = torch.rand(num_samples, feat_dim, generator=self._generator) * (2 * stdv) - stdv
            self.register_buffer(f"memory_{side}", bank)
            self.register_buffer(f"z_{side}", torch.tensor(0.0))  # 0: not set yet
        self.last_contrast_indices: Tensor | None = None
        self._remember(
            student_key=student_key,
            teacher_key=teacher_key,
            num_samples=self.num_samples,
            index_key=index_key,
            feat_dim=self.feat_dim,
            nce_k=int(nce_k),
            nce_t=self.nce_t,
            nce_m=self.nce_m,
            weight=self.weight,
            seed=seed,
        )

    def materialize(
        self,
        student_shape: Sequence[int],
        teacher_shape: Sequence[int],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[nn.Linear, nn.Linear]:
        """Create both heads now from full feature shapes (batch first; its size is ignored)."""
        s, t = tuple(student_shape), tuple(teacher_shape)
        check(
            len(s) in (2, 4) and len(t) in (2, 4),
            self.name,
            f"student feature {self.student_key!r} {s} and teacher feature "
            f"{self.teacher_key!r} {t}: need (B, D) or (B, C, H, W) features",
        )
        kw = {"device": device, "dtype": dtype}
        self.embed_student = nn.Linear(s[1], self.feat_dim, **kw)
        self.embed_teacher = nn.Linear(t[1], self.feat_dim, **kw)
        return self.embed_student, self.embed_teacher

    def forward(
        self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], labels: Tensor
    ) -> Tensor:
        s = self._student(student, self.student_key)
        t = self._teacher(teacher, self.teacher_key, like=s).detach()  # the teacher is fixed
        if self.index_key not in teacher:
            raise MissingOutputError(
                f"loss {self.name!r} reads each sample's dataset index as teacher input "
                f"{self.index_key!r}, but the teacher inputs given are {sorted(teacher)}; the "
                "trainer must hand the batch's indices in [0, num_samples) under that key"
            )
        idx = self._teacher(teacher, self.index_key, like=s)
        if self.embed_student is None:
            self.materialize(s.shape, t.shape, device=s.device, dtype=s.dtype)
        self._check_inputs(s, t, idx)
        idx = idx.long()
        # exp(score / τ) reaches e^(1/τ) ≈ 1.6e6 at τ = 0.07, beyond float16: compute in float32.
        with torch.autocast(s.device.type, enabled=False):
            e_s = _embed(self.embed_student, s)
            e_t = _embed(self.embed_teacher, t)
            contrast = self._draw(idx.cpu()).to(self.memory_student.device)
            self.last_contrast_indices = contrast
            out_s = self._scores(self.memory_teacher, contrast, e_s, self.z_student)
            out_t = self._scores(self.memory_student, contrast, e_t, self.z_teacher)
            loss = self._nce(out_s) + self._nce(out_t)
        if self.training:  # evaluation must leave the banks as training left them
            self._update(self.memory_student, idx, e_s)
            self._update(self.memory_teacher, idx, e_t)
        return self.weight * loss

    def _check_inputs(self, s: Tensor, t: Tensor, idx: Tensor) -> None:
        check(
            s.dim() in (2, 4) and t.dim() in (2, 4),
            self.name,
            f"needs (B, D) or (B, C, H, W) features; student {self.student_key!r} is "
            f"{tuple(s.shape)}, teacher {self.teacher_key!r} is {tuple(t.shape)}",
        )
        check(
            s.shape[0] == t.shape[0] >= 1 and tuple(idx.shape) == (s.shape[0],),
            self.name,
            f"needs one sample of each per row; student {tuple(s.shape)}, teacher "
            f"{tuple(t.shape)}, {self.index_key!r} {tuple(idx.shape)}",
        )
        check(
            s.shape[1] == self.embed_student.in_features
            and t.shape[1] == self.embed_teacher.in_features,
            self.name,
            f"heads {self.embed_student} (student) and {self.embed_teacher} (teacher) do not "
            f"fit student feature {tuple(s.shape)} and teacher feature {tuple(t.shape)}",
        )
        check(
            not idx.is_floating_point() and idx.dtype != torch.bool,
            self.name,
            f"{self.index_key!r} must hold integer sample indices, got {idx.dtype}",
        )
        check(
            int(idx.min()) >= 0 and int(idx.max()) < self.num_samples,
            self.name,
            f"{self.index_key!r} must lie in [0, num_samples={self.num_samples}), got "
            f"{int(idx.min())}..{int(idx.max())}: is num_samples the size of the training "
            "set the indices come from?",
        )

    def _draw(self, idx: Tensor) -> Tensor:
        """(B, K + 1) indices: each anchor, then K draws from the other N − 1 samples."""
        draws = torch.randint(
            0, self.num_samples - 1, (len(idx), self.nce_k), generator=self._generator
        )
        negatives = draws + (draws >= idx[:, None]).long()  # skip the anchor: uniform on the rest
        return torch.cat([idx[:, None], negatives], dim=1)

    def _scores(self, memory: Tensor, contrast: Tensor, e: Tensor, z: Tensor) -> Tensor:
        out = torch.exp(torch.einsum("bkf,bf->bk", memory[contrast].to(e.dtype), e) / self.nce_t)
        if z <= 0:  # RepDistiller fixes Z from the first batch, as a constant
            z.fill_(float(out.detach().mean()) * self.num_samples)
        return out / z.to(out.dtype)

    def _nce(self, out: Tensor) -> Tensor:
        noise = self.nce_k / self.num_samples  # K · Pn
        log_d1 = torch.log(out[:, 0] / (out[:, 0] + noise + EPS))
        log_d0 = torch.log(noise / (out[:, 1:] + noise + EPS))
        return -(log_d1.sum() + log_d0.sum()) / out.shape[0]

    @torch.no_grad()
    def _update(self, memory: Tensor, idx: Tensor, e: Tensor) -> None:
        moved = self.nce_m * memory[idx] + (1 - self.nce_m) * e.to(memory.dtype)
        memory[idx] = F.normalize(moved, dim=1)


def _embed(head: nn.Linear, f: Tensor) -> Tensor:
    """L2-normalised float32 embedding of a (B, D) feature or a (B, C, H, W) map, pooled."""
    f = f.mean(dim=(2, 3)) if f.dim() == 4 else f
    return F.normalize(head(f.to(head.weight.dtype)).float(), dim=1)
