"""A small, CPU-sized run of NASP's Table 3 pipeline on the recurrent cell space (--space rnn).

PTB is not on this machine, so the corpus is English text that is: Vim's documentation (/usr/share/vim/vim90/doc,
shipped with Debian's vim-runtime; any directory of .txt files works with --source). It is made word-level like
PTB: lower case, numbers -> N, word tokens only, the --vocab most frequent words of the training lines kept and the
rest <unk>, lines of >= 3 words; line i goes to valid if i % 20 == 0, to test if i % 20 == 1, else to train (the
first --train-tokens words of train are kept, and a tenth of that of valid and of test). Then, at one seed:
  1. search: DARTS first order, DARTS second order and NASP (algos/darts.py, algos/nasp.py --space rnn);
  2. retrain: each searched cell and the published DARTS_V1_RNN / DARTS_V2_RNN (train_eval.py);
and writes results/rnn_mini_cpu/: corpus.json (how the corpus was made), raw.json, table.md (beside NASP Table 3).

    python benchmarks/rnn_mini.py                       # ~30 min on 2 CPU cores
    python benchmarks/rnn_mini.py --quick               # a smoke run (tiny sizes)
    python benchmarks/rnn_mini.py --reuse-searches --eval-epochs 30   # longer retrainings of the same cells
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "algos"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))
import darts  # noqa: E402
import nasp  # noqa: E402
import train_eval  # noqa: E402

# NASP Table 3 (PTB): perplexity valid / test, parameters, search GPU-days
PAPER = {"DARTS (1st order)": (60.2, 57.6, "23M", 0.5), "DARTS (2nd order)": (59.7, 56.4, "23M", 1.0),
         "NASP": (59.9, 57.3, "23M", 0.1)}
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")


def build_corpus(source: Path, out: Path, vocab_size: int, train_tokens: int) -> dict:
    lines = []
    for path in sorted(source.glob("*.txt")):
        for line in path.read_text(encoding="utf-8", errors="replace").lower().splitlines():
            words = ["N" if w[0].isdigit() else w for w in WORD.findall(line)]
            if len(words) >= 3:
                lines.append(words)
    splits = {"train": [], "valid": [], "test": []}
    for i, words in enumerate(lines):
        splits["valid" if i % 20 == 0 else "test" if i % 20 == 1 else "train"].append(words)
    for split, limit in (("train", train_tokens), ("valid", train_tokens // 10), ("test", train_tokens // 10)):
        kept, n = [], 0
        for words in splits[split]:
            if n >= limit:
                break
            kept.append(words)
            n += len(words)
        splits[split] = kept
    kept = splits["train"]
    counts = collections.Counter(w for words in kept for w in words)
    vocab = {w for w, _ in counts.most_common(vocab_size - 2)}  # + <unk>, <eos>
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        (out / f"{split}.txt").write_text("".join(" ".join(w if w in vocab else "<unk>" for w in words) + "\n"
                                                  for words in rows))
    return {"source": str(source), "files": len(list(source.glob("*.txt"))), "vocab": vocab_size,
            **{f"{s}_tokens": sum(len(w) + 1 for w in rows) for s, rows in splits.items()}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--source", default="/usr/share/vim/vim90/doc", help="directory of English .txt files")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "rnn_mini_cpu"), help="results directory")
    p.add_argument("--work", default="runs/rnn_mini", help="corpus and run directories (runs/ is not committed)")
    p.add_argument("--vocab", type=int, default=2000)
    p.add_argument("--train-tokens", type=int, default=60_000)
    p.add_argument("--search-epochs", type=int, default=3)
    p.add_argument("--eval-epochs", type=int, default=8)
    p.add_argument("--nhid", type=int, default=64, help="emsize = nhid of the search and of the retraining")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--reuse-searches", action="store_true", help="take the searches' results from WORK/search_* "
                   "(genotype.json) when they are there: only the retrainings run")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.train_tokens, args.search_epochs, args.eval_epochs, args.nhid, args.vocab = 3000, 1, 1, 16, 200
    work, out = Path(args.work), Path(args.out)
    corpus_info = build_corpus(Path(args.source), work / "corpus", args.vocab, args.train_tokens)
    print("corpus:", corpus_info, flush=True)
    # DEVIATION: small model, few epochs and lighter output / input dropouts (0.2 instead of 0.75) so that a 64-unit
    # cell learns within a CPU budget; every other setting is the papers' (batch 32 instead of 256 / 64).
    size = ["--emsize", str(args.nhid), "--nhid", str(args.nhid), "--batch-size", "32", "--dropout", "0.2",
            "--dropoutx", "0.2", "--dataset", str(work / "corpus"), "--seed", str(args.seed), "--out-dir", str(work)]
    rows = []
    cells = {}
    for label, module, extra in (("DARTS (1st order)", darts, []), ("DARTS (2nd order)", darts, ["--unrolled"]),
                                 ("NASP", nasp, [])):
        name = f"search_{module.__name__}{'2' if extra else ''}"
        if args.reuse_searches and (work / name / "genotype.json").is_file():
            r = {**json.loads((work / name / "genotype.json").read_text()), "run_dir": str(work / name)}
        else:
            r = module.main(["--space", "rnn", "--epochs", str(args.search_epochs), *size, *extra, "--run-name", name])
        cells[label] = r["run_dir"]
        rows.append({"cell": label, "search_s": r["search_time_s"], "supernet_valid_ppl": r["supernet_valid_ppl"],
                     "genotype": r["genotype_str"]})
    for label in ("DARTS_V1_RNN", "DARTS_V2_RNN"):
        cells[label] = label
        rows.append({"cell": f"{label} (published)", "search_s": None, "supernet_valid_ppl": None, "genotype": label})
    for i, (row, genotype) in enumerate(zip(rows, cells.values())):
        r = train_eval.main(["--genotype", genotype, "--epochs", str(args.eval_epochs), *size, "--run-name", f"eval_{i}"])
        row.update(valid_ppl=r["valid_ppl"], test_ppl=r["test_ppl"], params=r["params"], eval_s=r["train_time_s"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus.json").write_text(json.dumps(corpus_info, indent=2) + "\n")
    (out / "raw.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    lines = [f"# Recurrent cell space, mini run (CPU, seed {args.seed})", "",
             f"Corpus: {corpus_info['files']} Vim help files ({args.source}), word level, vocabulary {args.vocab}, "
             f"{corpus_info['train_tokens']:,} / {corpus_info['valid_tokens']:,} / {corpus_info['test_tokens']:,} "
             f"train / valid / test tokens (not PTB). Search: {args.search_epochs} epochs, emsize = nhid = {args.nhid}, "
             f"batch 32, bptt 35. Retraining: {args.eval_epochs} epochs, same size, batch 32, SGD lr 20 then ASGD. "
             "Output and input dropouts 0.2 (papers: 0.75). Selection: the final genotype of each search; the "
             "retraining's best validation epoch. Regenerate: "
             f"`{' '.join(['python benchmarks/rnn_mini.py', *(sys.argv[1:] if argv is None else argv)])}` (searches "
             f"first run by the same command without --reuse-searches).", "",
             "| cell | search s | retrain valid ppl | test ppl | params | paper (PTB): valid / test, params, GPU-days |",
             "|---|---:|---:|---:|---:|---|"]
    for row in rows:
        paper = PAPER.get(row["cell"])
        search = "-" if row["search_s"] is None else f"{row['search_s']:.0f}"
        paper = "-" if paper is None else f"{paper[0]} / {paper[1]}, {paper[2]}, {paper[3]}"
        lines.append(f"| {row['cell']} | {search} | {row['valid_ppl']:.1f} | {row['test_ppl']:.1f} | "
                     f"{row['params']:,} | {paper} |")
    lines += ["", "Cells found:", ""] + [f"- {row['cell']}: `{row['genotype']}`" for row in rows[:3]]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
