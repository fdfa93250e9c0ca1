"""R-Net (ResNet-50 → 257 coefficients) on CPU: ms per face for B = 1 and B = 16, median over runs.

Random weights (speed does not depend on them). Configurations, all under ``torch.inference_mode()``:
  eager_f32        the network as loaded (NCHW, BatchNorm separate)
  prepared_f32     ``prepare_for_inference``: BatchNorm folded, channels_last weights
  prepared_bf16    the same under ``torch.autocast("cpu", bfloat16)`` (AVX512-BF16 / AMX CPUs only
                   gain); ``bf16_rel_error`` = max |bf16 − f32| / max |f32| on the B = 16 batch
  compiled_*       ``torch.compile`` (inductor, freezing) of the prepared network; skipped with a
                   reason when the compiler is unavailable or ``--no-compile`` is given

Usage: python benchmarks/rnet.py [--variant recon|seed] [--no-compile]   -> one JSON line
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, median_ms  # noqa: E402

from deep3dface.nets.rnet import RNet, prepare_for_inference  # noqa: E402

BATCHES = (1, 16)


def per_face_ms(fn, images: torch.Tensor, runs: dict[int, int], autocast: bool) -> dict[str, float]:
    """{"B1": ms per face, "B16": ...} for ``fn`` on the first B images."""
    out = {}
    for batch in BATCHES:
        x = images[:batch]
        cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

        def step():
            with torch.inference_mode(), cast:
                fn(x)

        out[f"B{batch}"] = round(median_ms(step, runs=runs[batch], warmup=2) / batch, 2)
    return out


def compile_or_reason(fn):
    """(compiled fn, None) or (None, why torch.compile cannot be used here)."""
    try:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights become constants: conv-BN folding, oneDNN weight prepacking
        compiled = torch.compile(fn)
        with torch.inference_mode():
            compiled(torch.rand(1, 3, 224, 224))
        return compiled, None
    except Exception as error:  # noqa: BLE001 - any compiler failure means "skip", reported in the JSON
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="recon", choices=("recon", "seed"))
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--runs", type=int, default=20, help="runs at B = 1 (B = 16 uses a quarter)")
    args = parser.parse_args()
    runs = {1: args.runs, 16: max(3, args.runs // 4)}
    torch.manual_seed(0)
    model = RNet(args.variant).eval()
    fast = prepare_for_inference(model)
    images = torch.rand(16, 3, 224, 224)

    results = {"eager_f32": per_face_ms(model.vector, images, runs, False),
               "prepared_f32": per_face_ms(fast.vector, images, runs, False),
               "prepared_bf16": per_face_ms(fast.vector, images, runs, True)}
    with torch.inference_mode():
        reference = model.vector(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast.vector(images).float()
    results["bf16_rel_error"] = float(f"{((low - reference).abs().max() / reference.abs().max()).item():.2e}")

    if args.no_compile:
        results["compiled"] = "skipped: --no-compile"
    else:
        compiled, reason = compile_or_reason(fast.vector)
        if compiled is None:
            results["compiled"] = f"skipped: {reason}"
        else:
            # Each new batch size or autocast state recompiles during per_face_ms's warm-up, untimed.
            results["compiled_f32"] = per_face_ms(compiled, images, runs, False)
            results["compiled_bf16"] = per_face_ms(compiled, images, runs, True)
    emit("rnet_forward", variant=args.variant, unit="ms_per_face", **results)


if __name__ == "__main__":
    main()
