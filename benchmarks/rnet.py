"""R-Net (ResNet-50 → 257 coefficients) on CPU: ms per face for B = 1, 8 and 16, median over runs.

Random weights (speed does not depend on them). Configurations, all under ``torch.inference_mode()``,
timed interleaved (one run of each in turn) so that load from other processes hits them alike:
  eager_f32        the network as loaded (NCHW, BatchNorm separate)
  prepared_f32     ``prepare_for_inference(precision="float32")``: BatchNorm folded, channels_last
  packed_bf16      prepared_f32 with a bfloat16 backbone whose weights are packed once for oneDNN
                   (``bfloat16_form="packed"``: the form "auto" picks with AMX)
  plain_bf16       the same with the modules cast to bfloat16 as they are (``"plain"``: the
                   form "auto" picks on CPUs with AVX512-BF16 but no AMX)
                   ``bf16_rel_error`` = max |bf16 − f32| / max |f32| on the B = 16 batch, per form;
                   ``auto_picks``: what ``prepare_for_inference`` chooses on this CPU
  autocast_bf16    prepared_f32 under ``torch.autocast("cpu", bfloat16)`` (weights cast every call)
  compiled_*       ``torch.compile`` (inductor, freezing) of prepared_f32; skipped with a reason when
                   the compiler is unavailable or ``--no-compile`` is given

Usage: python benchmarks/rnet.py [--variant recon|seed] [--threads N] [--no-compile]   -> one JSON line
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

from deep3dface.nets.packed import bfloat16_form, use_bfloat16  # noqa: E402
from deep3dface.nets.rnet import RNet, prepare_for_inference  # noqa: E402

BATCHES = (1, 8, 16)


def per_face_ms(configs: dict, images: torch.Tensor, runs: dict[int, int]) -> dict[str, dict[str, float]]:
    """{name: {"B1": ms per face, ...}} for configs {name: (fn, autocast)}, runs interleaved."""
    out = {name: {} for name in configs}
    for batch in BATCHES:
        x = images[:batch]
        times = {name: [] for name in configs}
        for run in range(2 + runs[batch]):  # two warm-up rounds: oneDNN primitives, recompiles
            for name, (fn, autocast) in configs.items():
                cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
                with torch.inference_mode(), cast:
                    start = time.perf_counter()
                    fn(x)
                    times[name].append((time.perf_counter() - start) * 1e3)
        for name, values in times.items():
            out[name][f"B{batch}"] = round(statistics.median(values[2:]) / batch, 2)
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
    parser.add_argument("--runs", type=int, default=20, help="runs at B = 1 (B = 8 and 16 use a quarter)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {1: args.runs, 8: max(3, args.runs // 4), 16: max(3, args.runs // 4)}
    torch.manual_seed(0)
    model = RNet(args.variant).eval()
    fast = prepare_for_inference(model, precision="float32")
    lowered = {f"{form}_bf16": prepare_for_inference(model, precision="bfloat16", bfloat16_form=form)
               for form in ("packed", "plain")}
    images = torch.rand(16, 3, 224, 224)

    configs = {"eager_f32": (model.vector, False), "prepared_f32": (fast.vector, False),
               **{form: (net.vector, False) for form, net in lowered.items()},
               "autocast_bf16": (fast.vector, True)}
    bf16 = use_bfloat16("auto", torch.device("cpu"))
    results = {"auto_picks": f"{bfloat16_form()}_bf16" if bf16 else "prepared_f32"}
    if args.no_compile:
        results["compiled"] = "skipped: --no-compile"
    else:
        compiled, reason = compile_or_reason(fast.vector)
        if compiled is None:
            results["compiled"] = f"skipped: {reason}"
        else:  # each new batch size or autocast state recompiles during the warm-up rounds, untimed
            configs.update(compiled_f32=(compiled, False), compiled_bf16=(compiled, True))
    results.update(per_face_ms(configs, images, runs))
    with torch.inference_mode():
        reference = model.vector(images)
        errors = {form: (net.vector(images) - reference).abs().max() / reference.abs().max()
                  for form, net in lowered.items()}
    results["bf16_rel_error"] = {form: float(f"{error.item():.2e}") for form, error in errors.items()}
    emit("rnet_forward", variant=args.variant, unit="ms_per_face", **results)


if __name__ == "__main__":
    main()
