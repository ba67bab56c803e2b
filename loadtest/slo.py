"""SLO gate for a load test: the exit code a deployment pipeline can act on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SloResult:
    ok: bool
    reasons: list[str]

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def evaluate(
    requests: int, failures: int, p95_ms: float | None, max_fail_ratio: float | None, max_p95_ms: float | None
) -> SloResult:
    """Pass when the failure ratio and p95 stay within their limits (a limit of None is not checked)."""
    reasons = []
    if requests == 0:
        return SloResult(False, ["no requests were made"])
    ratio = failures / requests
    if max_fail_ratio is not None and ratio > max_fail_ratio:
        reasons.append(f"failure ratio {ratio:.2%} > {max_fail_ratio:.2%}")
    if max_p95_ms is not None and p95_ms is not None and p95_ms > max_p95_ms:
        reasons.append(f"p95 {p95_ms:.0f} ms > {max_p95_ms:.0f} ms")
    return SloResult(not reasons, reasons)
