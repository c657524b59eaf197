#!/usr/bin/env python3
"""The model against scikit-learn's TF-IDF + LinearSVC over several splits:
runs `agentmesh model eval --data FILE --seed N` and baseline.py for each
seed and prints one JSON object with both accuracies per split, their means
and the paired difference (model minus scikit-learn) with its standard
error. One split's test part is about 1,200 samples, so a single split
moves by several tenths of a point; the mean over splits is the figure to
quote.

Usage: compare.py --data FILE [--seeds 42,7,1,2,3] [--agentmesh target/release/agentmesh]
                  [--model-args "--norm 1"]
(needs scikit-learn; about a minute per split for the model on 2 cores)
"""
import argparse
import json
import math
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd):
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--seeds", default="42,7,1,2,3")
    ap.add_argument("--agentmesh", default=os.path.join(HERE, "../../target/release/agentmesh"))
    ap.add_argument("--model-args", default="", help="more options for `agentmesh model eval`, e.g. \"--norm 1\"")
    args = ap.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        sys.exit(f"--seeds must be integers separated by commas, not {args.seeds!r}")
    if not os.path.exists(args.agentmesh):
        sys.exit(f"{args.agentmesh} not found: build it with cargo build --release -p agentmesh-node")
    splits = []
    for seed in seeds:
        ours = run_json([args.agentmesh, "model", "eval", "--data", args.data, "--seed", str(seed)] + args.model_args.split())
        sklearn = run_json([sys.executable, os.path.join(HERE, "baseline.py"), "--data", args.data, "--seed", str(seed)])
        split = {
            "seed": seed,
            "model": ours["test_accuracy"],
            "sklearn": sklearn["test_accuracy"],
            "rules": ours["baseline_test_accuracy"],
            "epochs": ours["epochs"],
        }
        print(json.dumps(split), file=sys.stderr)
        splits.append(split)
    n = len(splits)
    mean = lambda key: sum(s[key] for s in splits) / n
    diffs = [s["model"] - s["sklearn"] for s in splits]
    d = sum(diffs) / n
    se = math.sqrt(sum((x - d) ** 2 for x in diffs) / (n - 1) / n) if n > 1 else None
    print(json.dumps({
        "splits": splits,
        "mean": {"model": mean("model"), "sklearn": mean("sklearn"), "rules": mean("rules")},
        "paired_difference": {"mean": d, "standard_error": se},
        "model_better": sum(x > 0 for x in diffs),
        "sklearn_better": sum(x < 0 for x in diffs),
    }))


if __name__ == "__main__":
    main()
