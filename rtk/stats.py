"""Is an accuracy difference between two models real? Paired evidence on the same images.

Two models scored on the same N images differ only on the images one gets right and the other
wrong: `fixed` (the model right, the reference wrong) and `broken` (the reverse). Their accuracy
difference is (fixed - broken) / N, and under "no real difference" each discordant image is a fair
coin, so the exact McNemar test is a two-sided binomial test of `fixed` successes in
fixed + broken trials at p = 1/2. With 10,000 test images a drop of 0.15 points can be 45 broken
against 30 fixed (p = 0.11): noise, which the p-value says and the bare difference does not.

Only the standard library: exact integers (math.comb) keep the tail sums exact for any N.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rtk.errors import RtkError

Z95 = 1.959963984540054  # standard normal quantile for a two-sided 95% interval


@dataclass(frozen=True)
class Paired:
    """A model against a reference on the same `images`; accuracy figures in points (percent)."""

    images: int
    fixed: int  # right by the model, wrong by the reference
    broken: int  # right by the reference, wrong by the model
    delta_pct: float  # model accuracy - reference accuracy
    ci95_pct: tuple[float, float]  # 95% interval of delta_pct (paired Wald interval)
    p_value: float  # exact two-sided McNemar

    def __post_init__(self) -> None:  # from JSON (as_dict) the interval is a list
        object.__setattr__(self, "ci95_pct", tuple(self.ci95_pct))

    def as_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["ci95_pct"] = list(self.ci95_pct)
        return record

    def summary(self) -> str:
        """'-0.17 points (95% CI -0.33..-0.01; 23 fixed, 40 broken; McNemar p = 0.04)'"""
        low, high = self.ci95_pct
        return (f"{self.delta_pct:+.2f} points (95% CI {low:+.2f}..{high:+.2f}; {self.fixed} fixed, "
                f"{self.broken} broken; McNemar p = {format_p(self.p_value)})")


def mcnemar_p(fixed: int, broken: int) -> float:
    """Exact two-sided McNemar p-value: P(a fair-coin split of the discordant images at least as
    uneven as fixed : broken). 1.0 when there are none."""
    if fixed < 0 or broken < 0:
        raise ValueError("counts must be non-negative")
    n, k = fixed + broken, min(fixed, broken)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)  # int / int: correctly rounded even where 2**n overflows a float


def paired(correct: np.ndarray, reference_correct: np.ndarray) -> Paired:
    """The evidence for `correct` (bool [N], the model) against `reference_correct` (bool [N])."""
    correct, reference_correct = np.asarray(correct, bool), np.asarray(reference_correct, bool)
    if correct.shape != reference_correct.shape or correct.ndim != 1 or not len(correct):
        raise ValueError(f"need two equal, non-empty 1-D arrays, got {correct.shape} and {reference_correct.shape}")
    n = len(correct)
    fixed = int(np.sum(correct & ~reference_correct))
    broken = int(np.sum(~correct & reference_correct))
    delta = (fixed - broken) / n
    # Var of the mean of per-image differences d_i in {-1, 0, 1}: (E[d^2] - E[d]^2) / n
    half = Z95 * math.sqrt(max((fixed + broken) / n - delta**2, 0.0) / n)
    return Paired(images=n, fixed=fixed, broken=broken, delta_pct=100 * delta,
                  ci95_pct=(100 * (delta - half), 100 * (delta + half)), p_value=mcnemar_p(fixed, broken))


def accuracy_pct(logits: np.ndarray, labels: np.ndarray, what: str = "the model") -> float:
    """Top-1 percent of float [N, classes] logits against int [N] labels. NaN or infinite logits are
    an RtkError, not an accuracy: argmax of NaN is class 0, which scores 10% on CIFAR-10."""
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        raise RtkError(f"{what} gave NaN or infinite logits for {int(bad.sum()):,} of {len(logits):,} images: "
                       "no accuracy can be measured; its weights or BN statistics are broken")
    return 100.0 * float(np.mean(logits.argmax(axis=1) == labels))


def kl_divergence(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL(softmax(reference) || softmax(logits)) over the images (rows) of [N, classes]: how far
    a model's outputs are from the reference's, a continuous measure where counting flipped images
    depends on which few images sit on a decision boundary."""
    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64) - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))

    log_p, log_q = log_softmax(reference), log_softmax(logits)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))


def format_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"


def brief(evidence: Mapping[str, Any] | None) -> str:
    """'+23/-40, p=0.043' from Paired.as_dict() (a table cell); '-' where there is none."""
    if not evidence:
        return "-"
    return f"+{evidence['fixed']}/-{evidence['broken']}, p={format_p(evidence['p_value'])}"
