#!/usr/bin/env python3
"""Zennit's EpsilonPlus on torchvision VGG16 / ResNet-50 (seeded random weights), 224x224,
for the side-by-side table in docs/performance.md.

    /opt/fixenv/bin/python benches/peers/zennit_epsilon_plus.py --model vgg16 --batch 8 --threads 2

Prints one JSON line: the seconds of the imports and model set-up, of a plain forward pass
(median of --reps after one warm-up), of the first attribution call (cold) and the median of
--reps further calls (warm). Needs torch, torchvision and zennit (tests/fixtures/requirements.txt).
"""
import argparse
import importlib.metadata
import json
import statistics
import time
import timeit

T0 = time.perf_counter()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["vgg16", "resnet50"], default="vgg16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    import torch
    import torchvision
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlus

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    x = torch.randn(args.batch, 3, 224, 224)
    setup = time.perf_counter() - T0

    def median(f):
        return statistics.median(timeit.repeat(f, number=1, repeat=args.reps))

    with torch.no_grad():
        model(x)
        forward = median(lambda: model(x))
    # Attribute class 0 for every input: the cost does not depend on the class.
    with Gradient(model=model, composite=EpsilonPlus()) as attributor:
        t = time.perf_counter()
        _, relevance = attributor(x, torch.eye(1000)[[0] * args.batch])
        cold = time.perf_counter() - t
        warm = median(lambda: attributor(x, torch.eye(1000)[[0] * args.batch]))
    print(json.dumps({
        "tool": "zennit", "version": importlib.metadata.version("zennit"),
        "torch": torch.__version__, "model": args.model, "batch": args.batch,
        "threads": args.threads, "setup_s": round(setup, 3), "forward_s": round(forward, 4),
        "first_call_s": round(cold, 4), "warm_call_s": round(warm, 4),
        "relevance_shape": list(relevance.shape),
    }))


if __name__ == "__main__":
    main()
