"""A human-readable summary of a cache manifest (no torch, no onnxruntime)."""

from __future__ import annotations

from pathlib import Path

from onnxkd.cache.manifest import Manifest


def _disk_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*.npy"))


def _input_check_lines(manifest: Manifest) -> list[str]:
    """What the checks before caching found (caches made before they existed have none)."""
    checks = manifest.extra.get("input_checks")
    if not checks:
        return []
    low, high = checks["value_range"]
    if checks["teacher_accuracy"] is None:
        lines = [f"checked:  raw values {low:g}..{high:g} (no labels: teacher accuracy unchecked)"]
        return lines + [f"warning:  {p} (accepted)" for p in checks.get("accepted_problems", [])]
    lines = [
        f"checked:  teacher {100 * checks['teacher_accuracy']:.1f}% on {checks['samples']} "
        f"clean samples before caching (chance {100 * checks['chance']:.1f}%), raw values "
        f"{low:g}..{high:g}"
    ]
    for problem in checks.get("accepted_problems", []):
        lines.append(f"warning:  {problem} (accepted with --accept-low-accuracy)")
    return lines


def summarize(path: Path, manifest: Manifest, seconds: float | None = None) -> str:
    """Lines describing what a cache holds and how good its teacher is on each section."""
    t = manifest.targets
    teacher = manifest.teacher
    spec = manifest.input_spec
    storage = "all classes" if t.storage == "full" else f"top-{t.k} + residual mass"
    geometry = (
        f"{spec.size[0]}x{spec.size[1]}x{spec.channels}"
        if spec.size
        else (f"{spec.channels} features")
    )
    if spec.flatten:
        geometry += f" (flattened {'x'.join(map(str, spec.flatten))} images)"
    if spec.crop_pct is not None:
        geometry += (
            f" (photos: shorter side resized to size/{spec.crop_pct:g}, {spec.interpolation}, "
            "centre crop)"
        )
    lines = [
        f"cache:    {path}",
        f"teacher:  {Path(teacher.path).name} (sha256 {teacher.sha256[:12]}…, output "
        f"{t.output!r}, {t.teacher_output_kind} -> stored as {t.kind})",
        f"input:    {spec.layout} {geometry} {spec.dtype}, scale {spec.scale:.6g}, "
        f"mean {list(spec.mean)}, std {list(spec.std)} (from {manifest.input_spec_origin})",
        f"targets:  {t.num_classes} classes, {storage}, {t.dtype}",
    ]
    for name, section in sorted(manifest.sections.items(), key=lambda kv: kv[0] != "train"):
        aug = section.augmentation
        accs = section.teacher_accuracy
        acc = (
            (
                f"teacher accuracy {100 * sum(accs) / len(accs):.2f}%"
                + (" (mean over views)" if len(accs) > 1 else "")
            )
            if accs
            else ""
        )
        split = section.split_info
        how = (
            f"holdout {split['fraction']} seed {split['seed']}"
            if split.get("method") == "holdout"
            else ("unlabeled" if not section.labeled else "native split")
        )
        if "scale" in aug:
            ratio = [round(r, 4) for r in aug["ratio"]]
            policy = f"{aug['policy']} (scale {aug['scale']}, ratio {ratio}, flip)"
        else:
            policy = aug["policy"]
        if aug.get("mix", "none") != "none":
            policy += f" + {aug['mix']} (mixup α {aug['mixup_alpha']}, cutmix α "
            policy += f"{aug['cutmix_alpha']}, p {aug['mix_prob']})"
        skipped = f"; {split['excluded']} bad image(s) left out" if split.get("excluded") else ""
        lines.append(
            f"{name + ':':9} {section.n} samples ({section.data_ref.split}, {how}{skipped}) x "
            f"{section.views} view(s), augment {policy}; {acc}"
        )
    lines.extend(_input_check_lines(manifest))
    if manifest.features:
        feats = ", ".join(f"{k} {list(v.shape)}" for k, v in manifest.features.items())
        lines.append(f"features: {feats}")
    lines.append(f"size:     {_disk_size(path) / 2**20:.2f} MiB on disk")
    if seconds:
        total = sum(s.n * s.views for s in manifest.sections.values())
        lines.append(f"time:     {seconds:.1f} s ({total / seconds:.0f} sample-views/s)")
    if any("loop" in p or "one sample" in p for p in teacher.passes):
        lines.append("note:     the teacher hard-codes batch 1, so it ran one sample at a time")
    return "\n".join(lines)
