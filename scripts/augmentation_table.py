"""Issue 4, "Diverse samples as data": the paper's Table 2 (000, Sec. 4) on `digits` made imbalanced.

Keeps 20% of one class's training images (class 3 by default), then runs the pipeline up to the
`augmentation` stage: sample -> features -> novelty (DS) -> augmentation, whose classifier is
trained on (a) the imbalanced training split, (b) plus ordinary generated samples of the
minority class topped up to the size of the largest class, (c) plus as many DS of it instead.
Novelty runs in `joint` mode, as for the documented table.
Prints the table as markdown (for docs/augmentation.md), writes the bar chart to
docs/img/augmentation_accuracy.png and the table JSON next to it.

The model is the cached demo model in var/models when present (the demo recipe), else the test
suite's 400-step model in var/test-models (the same recipe stopped after 400 steps); the output
says which. Both were trained on all 1,797 digits, held-out split included (see the docs).
Threads, set deliberately: torch uses 1 thread (2 cores shared with other agents).
Usage: .venv/bin/python scripts/augmentation_table.py [--samples 500] [--steps 20] [--extra 1024]
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
from diffaudit.metrics.augmentation import CONDITIONS
from diffaudit.pipeline import run
from diffaudit.spec import EvaluationSpec
from diffaudit.stages.augmentation import CHART_KEY, TABLE_KEY
from diffaudit.store import LocalStore, ScopedStore, load_json

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "var" / "models"
TEST_MODELS = ROOT / "var" / "test-models"
IMAGES = ROOT / "docs" / "img"
JOB = "evaluations/augmentation-table"


def cell(accuracy: dict[str, Any]) -> str:
    return f"{accuracy['mean']:.3f} ± {accuracy['std']:.3f}"


def markdown_table(table: dict[str, Any]) -> str:
    """Paper Table 2's layout: per class and overall, training counts, test count, accuracy per condition."""
    header = "| class | # train (original / +generated / +DS) | # test | original | +generated | +DS | DS - original |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for row in [*table["classes"], {**table["overall"], "name": "overall"}]:
        train = " / ".join(str(row["train"][k]) for k in CONDITIONS)
        accuracy = row["accuracy"]
        change = accuracy["diverse"]["mean"] - accuracy["original"]["mean"]
        cells = " | ".join(cell(accuracy[k]) for k in CONDITIONS)
        lines.append(f"| {row['name']} | {train} | {row['test']} | {cells} | {change:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=500, help="the job's samples (classes in turn)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--minority", type=int, default=3, help="class made a minority")
    parser.add_argument("--keep", type=float, default=0.2, help="share of its training images kept")
    parser.add_argument("--extra", type=int, default=1024, help="cap on extra minority samples (max_extra_samples)")
    parser.add_argument("--seeds", type=int, default=3, help="classifier seeds")
    parser.add_argument("--epochs", type=int, default=10, help="classifier epochs")
    parser.add_argument("--store", type=Path, default=ROOT / "var" / "augmentation-table", help="artifact folder")
    args = parser.parse_args()
    configure_threads(1)

    model, model_note = trained_or_test_model("digits", MODELS, TEST_MODELS)
    store = LocalStore(args.store)
    if not store.exists("datasets/digits/meta.json"):
        write_builtin_dataset("digits", store, "datasets/digits")
    spec = EvaluationSpec(
        stages=("augmentation",),
        sample={"n": args.samples, "steps": args.steps, "scheduler": "ddim"},
        # the documented Table 2 was made in joint mode (the novelty default then; `fixed` is the default now)
        novelty={"mode": "joint"},
        augmentation={
            "seeds": args.seeds,
            "epochs": args.epochs,
            "minority_class": args.minority,
            "minority_keep_fraction": args.keep,
            "max_extra_samples": args.extra,
        },
    )
    last_print = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        if time.monotonic() - last_print[0] > 20 or done == total:
            last_print[0] = time.monotonic()
            print(f"  {stage}: {done}/{total}", flush=True)

    started = time.perf_counter()
    results = run(
        spec,
        checkpoint_dir=model,
        dataset=Dataset.open(store, "datasets/digits"),
        store=store,
        job_prefix=JOB,
        on_progress=progress,
    )
    seconds = time.perf_counter() - started
    job = ScopedStore(store, JOB)
    table = load_json(job, TABLE_KEY)
    IMAGES.mkdir(parents=True, exist_ok=True)
    (IMAGES / "augmentation_accuracy.png").write_bytes(job.get_bytes(CHART_KEY))
    (IMAGES / "augmentation_table.json").write_text(json.dumps(table, indent=1))

    summary = results["stages"]["augmentation"]
    novelty = results["stages"]["novelty"]
    print(f"model: {model_note}")
    print(
        f"spec: {json.dumps(spec.model_dump(mode='json')['augmentation'])}, samples {args.samples} x DDIM-{args.steps}"
    )
    print(f"novelty: {novelty['headline']}")
    print(f"augmentation: {summary['headline']}")
    counts = {k: summary[k] for k in ("wanted", "added", "shortfall", "ds_available", "extra_samples", "extra_ds")}
    print(f"counts: {json.dumps(counts)}")
    stage_seconds = {name: s.get("seconds") for name, s in results["stages"].items()}
    print(f"seconds: {json.dumps(stage_seconds)} (total {seconds:.0f} s in this run)")
    print()
    print(markdown_table(table))


if __name__ == "__main__":
    main()
