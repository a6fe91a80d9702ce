"""A fixed job through diffaudit.pipeline.run, recorded so that two versions of the code can be compared.

`run OUT` trains a tiny demo model (fixed seed, cached in OUT), runs two jobs on the built-in digits on the CPU
with one thread and fixed seeds, and writes into OUT:
  results.json  the results documents (timings removed), one per job; a rejected job's reason and evidence
  arrays.json   the sha256 of every stored .npy array (job folders and the shared cache), by key
  files.json    the sha256 of every other stored file but JSON (PNG, CSV, zip), for information
The jobs: "all" runs every stage (early rejection off, so that every stage runs); "early" runs the irs stage
with early rejection while sampling.
`compare A B` prints the differences between two such folders and exits 1 if results or arrays differ
(an array stored under another key with the same content is reported, not counted as a difference).
Usage: .venv/bin/python scripts/regression_job.py run OUT; .venv/bin/python scripts/regression_job.py compare A B
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from diffaudit.datasets import Dataset, write_builtin_dataset
from diffaudit.demo import ensure_demo_model
from diffaudit.device import configure_threads
from diffaudit.pipeline import Rejected, run
from diffaudit.spec import EvaluationSpec
from diffaudit.store import LocalStore

MODEL_TRAIN_STEPS = 60
ALL_STAGES = {
    "stages": ["sample", "features", "irs", "balance", "novelty", "memorization", "guided", "augmentation"],
    "sample": {"n": 48, "steps": 4, "seed": 3, "batch_size": 16},
    "features": {"extractor": "random-cnn", "seed": 1},
    "irs": {"early_rejection": False},
    "balance": {"classifier_epochs": 1, "seed": 2},
    "novelty": {
        "seeds": 2,
        "n_iter": 50,
        "transform_iter": 10,
        "n_rounds": 2,
        "solvers": [{"scheduler": "ddpm", "steps": 3}],
        "extractors": [{"name": "pixels"}],
    },
    "memorization": {"space": "both", "n_neighbours": 10, "max_images": 24, "batch_size": 8, "n_steps": 2},
    "guided": {
        "n": 8,
        "steps": 3,
        "batch_size": 8,
        "classifier_steps": 6,
        "discriminator_steps": 6,
        "discriminator_samples": 16,
    },
    "augmentation": {
        "seeds": 1,
        "epochs": 1,
        "minority_class": 3,
        "minority_keep_fraction": 0.2,
        "max_extra_samples": 8,
    },
}
EARLY_REJECTION = {
    "stages": ["irs"],
    "sample": {"n": 64, "steps": 4, "seed": 5, "batch_size": 16},
    "irs": {"early_rejection": True, "target": 0.9},
}
JOBS = {"all": ALL_STAGES, "early": EARLY_REJECTION}
TIMING = re.compile(r"seconds|per_second|^reduction$")  # guided cost: reduction is a ratio of timings
SPEED = re.compile(r", [0-9.]+ images/s")


def without_timings(value: Any) -> Any:
    """The results with every timing (keys naming seconds, the sampling speed in headlines) removed."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not TIMING.search(k)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    if isinstance(value, str):
        return SPEED.sub("", value)
    return value


def run_job(name: str, spec: EvaluationSpec, model: Path, store: LocalStore, dataset: Dataset) -> dict[str, Any]:
    try:
        return run(spec, checkpoint_dir=model, dataset=dataset, store=store, job_prefix=f"evaluations/{name}")
    except Rejected as rejection:
        return {"rejected": rejection.reason, "evidence": rejection.evidence}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(out: Path) -> None:
    configure_threads(1)
    store_root = out / "store"
    shutil.rmtree(store_root, ignore_errors=True)
    model = ensure_demo_model("digits", out / "model", progress=False, train_steps=MODEL_TRAIN_STEPS)
    store = LocalStore(store_root)
    write_builtin_dataset("digits", store, "datasets/digits")
    dataset = Dataset.open(store, "datasets/digits")
    results = {
        name: without_timings(run_job(name, EvaluationSpec.model_validate(job), model, store, dataset))
        for name, job in JOBS.items()
    }
    files = sorted(p for p in store_root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))
    arrays = {str(p.relative_to(store_root)): sha256(p) for p in files if p.suffix == ".npy"}
    others = {str(p.relative_to(store_root)): sha256(p) for p in files if p.suffix not in (".npy", ".json")}
    (out / "results.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (out / "arrays.json").write_text(json.dumps(arrays, indent=1, sort_keys=True) + "\n")
    (out / "files.json").write_text(json.dumps(others, indent=1, sort_keys=True) + "\n")
    print(f"{len(arrays)} arrays and {len(others)} other files recorded in {out}")


def json_differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                found.append(f"{where}/{key}: only in {'B' if key not in a else 'A'}")
            else:
                found += json_differences(a[key], b[key], f"{where}/{key}")
        return found
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in json_differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {json.dumps(a)[:200]} != {json.dumps(b)[:200]}"]


def hash_differences(a: dict[str, str], b: dict[str, str]) -> tuple[list[str], list[str]]:
    """(differences, renames): keys whose content differs or is missing, and content found under another key."""
    differences: list[str] = []
    renames: list[str] = []
    by_hash_a, by_hash_b = {h: k for k, h in a.items()}, {h: k for k, h in b.items()}
    for key in sorted(set(a) | set(b)):
        if key in a and key in b:
            if a[key] != b[key]:
                differences.append(f"{key}: content differs")
        elif key in a:
            moved = by_hash_b.get(a[key])
            (renames if moved else differences).append(f"{key}: " + (f"now {moved}" if moved else "only in A"))
        elif b[key] not in by_hash_a:
            differences.append(f"{key}: only in B")
    return differences, renames


def compare(a: Path, b: Path) -> int:
    results = json_differences(*(json.loads((d / "results.json").read_text()) for d in (a, b)))
    arrays, renamed = hash_differences(*(json.loads((d / "arrays.json").read_text()) for d in (a, b)))
    files, renamed_files = hash_differences(*(json.loads((d / "files.json").read_text()) for d in (a, b)))
    count = len(json.loads((a / "arrays.json").read_text()))
    for title, lines in [
        ("results differ", results),
        ("arrays differ", arrays),
        ("arrays with the same content under another key", renamed),
        ("other files differ (information only)", files + renamed_files),
    ]:
        print(f"{title}: {len(lines)}")
        for line in lines:
            print(f"  {line}")
    identical = not results and not arrays
    print(f"results and {count} arrays {'identical' if identical else 'DIFFER'}")
    return 0 if identical else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run").add_argument("out", type=Path)
    both = commands.add_parser("compare")
    both.add_argument("a", type=Path)
    both.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        args.out.mkdir(parents=True, exist_ok=True)
        record(args.out)
    else:
        sys.exit(compare(args.a, args.b))


if __name__ == "__main__":
    main()
