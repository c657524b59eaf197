#!/usr/bin/env python3
"""Builds a text-classification dataset nobody on this project wrote: which crate
a Rust test function belongs to, from the identifiers it uses, taken from the
crate sources in the local cargo registry (~/.cargo/registry/src).

One JSON object per line, as `agentmesh model train|eval --data` reads them:
  {"context": {"text": "...", "keywords": [...], "language": "rust"}, "label": "<crate>"}

Usage: dataset.py [--registry DIR] [--min-tests 60] [--max-per-crate 400]
                  [--crates 40] --out FILE
"""
import argparse
import glob
import json
import os
import re
import sys

TEST_ATTR = re.compile(r"#\[(?:tokio::)?test[^\]]*\]\s*(?:#\[[^\]]*\]\s*)*(?:pub\s+)?(?:async\s+)?fn\s+(\w+)")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEYWORDS = set("""as async await break const continue crate dyn else enum extern false fn for if impl
in let loop match mod move mut pub ref return self Self static struct super trait true type unsafe
use where while assert assert_eq assert_ne unwrap expect let Some None Ok Err vec println format
new clone to_string into iter collect len is_some is_none is_ok is_err test""".split())


def body_after(src, start):
    """The text of the braced block that starts at the first '{' after start."""
    i = src.find("{", start)
    if i < 0:
        return ""
    depth = 0
    for j in range(i, min(len(src), i + 20000)):
        c = src[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return src[i + 1 : j]
    return ""


def split_words(ident):
    parts = []
    for piece in ident.split("_"):
        parts.extend(re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", piece))
    return [p.lower() for p in parts if len(p) > 1]


def tests_of(crate_dir):
    out = []
    for path in glob.glob(os.path.join(crate_dir, "**", "*.rs"), recursive=True):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                src = f.read()
        except OSError:
            continue
        for m in TEST_ATTR.finditer(src):
            body = body_after(src, m.end())
            idents = [t for t in IDENT.findall(body) if t not in KEYWORDS]
            if len(idents) < 3:
                continue
            words = []
            for t in [m.group(1)] + idents:
                words.extend(split_words(t))
            keywords = sorted(set(t for t in idents if len(t) > 3))[:32]
            out.append({"text": " ".join(words), "keywords": keywords})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--registry", default=os.path.expanduser("~/.cargo/registry/src"))
    ap.add_argument("--min-tests", type=int, default=60)
    ap.add_argument("--max-per-crate", type=int, default=400)
    ap.add_argument("--crates", type=int, default=40)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    newest = {}
    for d in sorted(glob.glob(os.path.join(args.registry, "*", "*"))):
        name = os.path.basename(d)
        m = re.match(r"(.+)-(\d+\.\d+\.\d+.*)$", name)
        if m:
            newest[m.group(1)] = d  # sorted: the last version wins
    per_crate = {}
    for crate, d in sorted(newest.items()):
        tests = tests_of(d)
        if len(tests) >= args.min_tests:
            per_crate[crate] = tests[: args.max_per_crate]
    chosen = sorted(per_crate, key=lambda c: (-len(per_crate[c]), c))[: args.crates]
    n = 0
    with open(args.out, "w") as out:
        for crate in sorted(chosen):
            for t in per_crate[crate]:
                sample = {"context": {"text": t["text"], "keywords": t["keywords"], "language": "rust"}, "label": crate}
                out.write(json.dumps(sample) + "\n")
                n += 1
    print(f"{n} samples of {len(chosen)} crates written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
