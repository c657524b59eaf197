#!/usr/bin/env python3
"""The standard text classifier the model is measured against: scikit-learn's
TF-IDF (word uni- and bigrams, sublinear tf) + LinearSVC, on exactly the split
`agentmesh model eval --data FILE --seed N` uses (see `split` below and
neural/src/dataset.rs). Prints JSON.

Usage: baseline.py --data FILE [--seed 42]   (needs scikit-learn)
"""
import argparse
import json
import sys
import time

MASK = (1 << 64) - 1


def splitmix64(x):
    z = (x + 0x9E3779B97F4A7C15) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def split(n, seed):
    """Indices of the train, validation and test parts (70/20/10)."""
    order = sorted(range(n), key=lambda i: (splitmix64((seed ^ i) & MASK), i))
    n_train, n_val = n * 7 // 10, n * 2 // 10
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def document(context):
    return " ".join([context.get("text", "")] + context.get("keywords", []))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.metrics import accuracy_score, f1_score
        from sklearn.svm import LinearSVC
    except ImportError:
        sys.exit("baseline.py needs scikit-learn: pip install scikit-learn")
    samples = [json.loads(line) for line in open(args.data) if line.strip()]
    docs = [document(s["context"]) for s in samples]
    labels = [s["label"] for s in samples]
    train, _val, test = split(len(samples), args.seed)
    started = time.time()
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), min_df=1)
    x_train = vectorizer.fit_transform([docs[i] for i in train])
    clf = LinearSVC(C=1.0).fit(x_train, [labels[i] for i in train])
    predicted = clf.predict(vectorizer.transform([docs[i] for i in test]))
    truth = [labels[i] for i in test]
    print(json.dumps({
        "classifier": "sklearn TfidfVectorizer(1-2 grams, sublinear tf) + LinearSVC",
        "samples": len(samples),
        "classes": len(set(labels)),
        "test_accuracy": accuracy_score(truth, predicted),
        "macro_f1": f1_score(truth, predicted, average="macro"),
        "train_seconds": time.time() - started,
    }))


if __name__ == "__main__":
    main()
