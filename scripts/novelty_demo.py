"""Issue 4, the `novelty` stage on `digits`: the paper's Table 1 / Table 3 layout for one checkpoint, and figures.

Runs the pipeline up to `novelty` twice on the built-in digits with the same samples: in `joint` mode
(the authors' method) and in `fixed` mode (the default: cached training embedding), each with extra
solvers and a second extractor. Prints both tables as markdown (for docs/novelty.md) and writes
docs/img/novelty_tsne.png (t-SNE scatter), docs/img/novelty_fig1.png (the paper's Fig. 1) and
docs/img/novelty_table.json.

The model is the cached demo model in var/models when present, else the test suite's
400-step model in var/test-models (the same recipe stopped after 400 steps); the output says which.
The extractors are random-initialised (no pretrained weights offline): random-cnn and raw pixels.
Threads, set deliberately: torch and t-SNE use 1 thread (2 cores shared with other agents).
Usage: .venv/bin/python scripts/novelty_demo.py [--samples 300] [--steps 20] [--seeds 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from diffaudit.datasets import Dataset, write_builtin_dataset
from diffaudit.demo import trained_or_test_model
from diffaudit.device import configure_threads
from diffaudit.pipeline import run
from diffaudit.spec import EvaluationSpec
from diffaudit.stages.novelty import FIGURE_KEY, TSNE_PNG_KEY
from diffaudit.store import LocalStore, ScopedStore

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "var" / "models"
TEST_MODELS = ROOT / "var" / "test-models"
IMAGES = ROOT / "docs" / "img"
SOLVERS = [
    {"scheduler": "pndm", "steps": 20},
    {"scheduler": "dpmsolver++", "steps": 20},
    {"scheduler": "unipc", "steps": 20},
]


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Table 1 / Table 3 layout: DS count and rate per solver and extractor, with the time of each part."""
    lines = [
        "| solver | steps | extractor | # DS (majority) | DS per seed | rate | k-NN out | sampling s | t-SNE s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = "/".join(str(c) for c in r["ds_count_per_seed"])
        sampling = "-" if r["sampling_seconds"] is None else f"{r['sampling_seconds']:.1f}"
        lines.append(
            f"| {r['scheduler']} | {r['steps']} | {r['extractor']} | {r['ds_count']} | {per_seed} | "
            f"{100 * r['ds_rate']:.1f}% | {r['knn_support_count']} | {sampling} | {r['detection_seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--store", type=Path, default=ROOT / "var" / "novelty-demo")
    args = parser.parse_args()
    configure_threads(1)
    model, model_note = trained_or_test_model("digits", MODELS, TEST_MODELS)
    store = LocalStore(args.store)
    if not store.exists("datasets/digits/meta.json"):
        write_builtin_dataset("digits", store, "datasets/digits")
    dataset = Dataset.open(store, "datasets/digits")
    print(f"model: {model_note}; {args.samples} samples, DDIM {args.steps} steps; store {args.store}")
    output: dict[str, Any] = {"model": model_note}
    for mode in ("joint", "fixed"):
        spec = EvaluationSpec(
            stages=("novelty",),
            sample={"n": args.samples, "steps": args.steps, "batch_size": 100},
            features={"extractor": "random-cnn"},
            novelty={"mode": mode, "seeds": args.seeds, "solvers": SOLVERS, "extractors": [{"name": "pixels"}]},
        )
        started = time.perf_counter()
        results = run(spec, checkpoint_dir=model, dataset=dataset, store=store, job_prefix=f"evaluations/{mode}")
        summary = results["stages"]["novelty"]
        print(f"\n## {mode} mode ({time.perf_counter() - started:.0f} s)\n\n{summary['headline']}\n")
        print(markdown_table(summary["table"]))
        output[mode] = {key: summary[key] for key in ("headline", "table", "tsne", "knn_support", "information")}
        if mode == "joint":
            job = ScopedStore(store, f"evaluations/{mode}")
            (IMAGES / "novelty_tsne.png").write_bytes(job.get_bytes(TSNE_PNG_KEY))
            (IMAGES / "novelty_fig1.png").write_bytes(job.get_bytes(FIGURE_KEY))
    (IMAGES / "novelty_table.json").write_text(json.dumps(output, indent=1))
    print(f"\nwrote {IMAGES / 'novelty_tsne.png'}, {IMAGES / 'novelty_fig1.png'}, {IMAGES / 'novelty_table.json'}")


if __name__ == "__main__":
    main()
