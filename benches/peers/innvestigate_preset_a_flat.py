#!/usr/bin/env python3
"""iNNvestigate 2.1.2's lrp.sequential_preset_a_flat on tf.keras VGG16 (random weights),
224x224, for the side-by-side table in docs/performance.md.

    python3 -m venv /opt/innvenv
    /opt/innvenv/bin/pip install "tensorflow-cpu==2.14.*" innvestigate==2.1.2
    /opt/innvenv/bin/python benches/peers/innvestigate_preset_a_flat.py --batch 8 --threads 2

iNNvestigate 2 needs eager execution disabled. Prints one JSON line: the seconds of the imports
and model set-up, of a plain Keras predict (median of --reps after one warm-up), of the first
analyze call (it builds and compiles the TensorFlow graph: cold) and the median of --reps
further calls (warm).
"""
import argparse
import importlib.metadata
import json
import os
import statistics
import time
import timeit

T0 = time.perf_counter()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.compat.v1.disable_eager_execution()
    import innvestigate

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.applications.VGG16(weights=None)
    x = np.random.default_rng(0).normal(size=(args.batch, 224, 224, 3)).astype(np.float32)
    setup = time.perf_counter() - T0

    def median(f):
        return statistics.median(timeit.repeat(f, number=1, repeat=args.reps))

    model.predict(x, verbose=0)
    forward = median(lambda: model.predict(x, verbose=0))
    analyzer = innvestigate.create_analyzer(
        "lrp.sequential_preset_a_flat", innvestigate.model_wo_softmax(model))
    t = time.perf_counter()
    a = analyzer.analyze(x)
    cold = time.perf_counter() - t
    warm = median(lambda: analyzer.analyze(x))
    print(json.dumps({
        "tool": "innvestigate", "version": importlib.metadata.version("innvestigate"),
        "tensorflow": tf.__version__, "model": "vgg16", "batch": args.batch,
        "threads": args.threads, "setup_s": round(setup, 3), "forward_s": round(forward, 4),
        "first_call_s": round(cold, 4), "warm_call_s": round(warm, 4),
        "relevance_shape": list(a.shape),
    }))


if __name__ == "__main__":
    main()
