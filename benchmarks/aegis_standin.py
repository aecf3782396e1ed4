"""Layer-loop speed on a random model shaped like aegis-embed, transformers-driven against lean, in one run.

    python benchmarks/aegis_standin.py [--threads 2] [--repeats 30] [--tokens 16]

Speed and memory do not depend on the weights, so a randomly initialised
ModernBERT with aegis-embed's configuration measures its cost on this machine.
That configuration has 22 layers, hidden 768, 12 heads, GLU intermediate 1152,
global attention every third layer, a local window of 128 tokens, a
256,000-token vocabulary and rotary theta 160,000 for both layer types. It
makes about 307M parameters, 1.2 GB in float32. The script times one task of ``--tokens``
random token ids through:

- the transformers-driven loop (aegis_router.backbones.ModernBertBackbone) to 6 and 22 layers;
- the lean runtime in float32 to 6 and 22 layers;
- the lean runtime with int8 linear layers to 6 and 22 layers.

The three runtimes share the embedding table. The lean ones each get their own
copy of the layers, because the lean runtime re-lays the float weights and the
int8 one replaces them, while the transformers-driven loop must keep the
layout transformers loads. With the three loaded the process held about
2.5 GB resident on a 2-core x86 VM, and building the random model peaked at
about 3.9 GB. Modes take turns on every repetition, so only ratios within one
run are meant to be compared.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import time
from pathlib import Path

import torch
from transformers import ModernBertConfig, ModernBertModel

from aegis_router.backbones import Backbone, ModernBertBackbone
from aegis_router.lean import LeanModernBertBackbone

DEPTHS = (6, 22)


def aegis_config() -> ModernBertConfig:
    rope = {"rope_type": "default", "rope_theta": 160000.0}
    return ModernBertConfig(
        vocab_size=256000,
        hidden_size=768,
        intermediate_size=1152,
        num_hidden_layers=22,
        num_attention_heads=12,
        global_attn_every_n_layers=3,
        local_attention=128,
        max_position_embeddings=32768,
        rope_parameters={"full_attention": dict(rope), "sliding_attention": dict(rope)},
    )


def twin_with_own_layers(model: ModernBertModel) -> ModernBertModel:
    """Return a model that shares ``model``'s embeddings, final norm and rotary tables but owns a copy of its layers."""
    with torch.device("meta"):
        twin = ModernBertModel(model.config)
    twin.embeddings = model.embeddings
    twin.final_norm = model.final_norm
    twin.rotary_emb = model.rotary_emb
    twin.layers = copy.deepcopy(model.layers)
    return twin.eval()


def peak_rss_gb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def current_rss_gb() -> float:
    # The second field of /proc/self/statm is the resident set in pages (Linux only).
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1024**3


def time_backbones(backbones: dict[str, Backbone], tokens: int, repeats: int, seed: int) -> dict[str, dict[int, float]]:
    """Median milliseconds of running each backbone to each depth of DEPTHS on one task."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, 256000, (1, tokens), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    samples = {(name, depth): [] for name in backbones for depth in DEPTHS}
    with torch.inference_mode():
        embedded = {name: backbone.embed(input_ids) for name, backbone in backbones.items()}
        for repeat in range(repeats + 3):
            for (name, depth), values in samples.items():
                started = time.perf_counter()
                backbones[name].run_layers(embedded[name], attention_mask, 0, depth)
                if repeat >= 3:
                    values.append((time.perf_counter() - started) * 1000)

    result: dict[str, dict[int, float]] = {}
    for (name, depth), values in samples.items():
        result.setdefault(name, {})[depth] = statistics.median(values)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=30, help="timed passes per runtime and depth (default 30)")
    parser.add_argument("--tokens", type=int, default=16, help="tokens in the timed task (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and token ids (default 0)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    model = ModernBertModel(aegis_config()).eval()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(
        f"aegis-shaped random ModernBERT: {parameters / 1e6:.0f}M parameters, "
        f"built in {time.perf_counter() - started:.0f} s; {torch.get_num_threads()} torch threads; "
        f"resident memory {current_rss_gb():.2f} GB"
    )

    backbones: dict[str, Backbone] = {
        "transformers": ModernBertBackbone(model),
        "lean float32": LeanModernBertBackbone(twin_with_own_layers(model)),
        "lean int8": LeanModernBertBackbone(twin_with_own_layers(model), quantize="int8"),
    }
    print(f"resident memory with all three runtimes: {current_rss_gb():.2f} GB (peak so far {peak_rss_gb():.2f} GB)")

    times = time_backbones(backbones, args.tokens, args.repeats, args.seed)
    base = times["transformers"][6]
    print(f"\none task of {args.tokens} tokens, median of {args.repeats} passes")
    print(f"{'runtime':<14}{'6 layers ms':>13}{'22 layers ms':>14}{'6-layer speed-up':>18}")
    for name, by_depth in times.items():
        print(f"{name:<14}{by_depth[6]:>13.1f}{by_depth[22]:>14.1f}{base / by_depth[6]:>17.2f}x")
    print(f"transformers 22 layers / 6 layers: {times['transformers'][22] / base:.2f}x")
    print(f"transformers 22 layers / lean int8 6 layers: {times['transformers'][22] / times['lean int8'][6]:.2f}x")

    if args.json:
        figures = {
            "threads": torch.get_num_threads(),
            "tokens": args.tokens,
            "ms": times,
            "rss_gb": current_rss_gb(),
            "peak_rss_gb": peak_rss_gb(),
        }
        args.json.write_text(json.dumps(figures, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
