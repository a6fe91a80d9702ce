"""The CI gate on real models: the tiny demo model passes, the tiny overfitted one is rejected early.

Measured (docs/irs.md): with random-cnn features, Euclidean retrieval, 512 samples of 10 DDIM steps, the tiny
healthy model reaches IRS_inf 0.45 [0.41, 0.50] and the tiny overfitted one 0.17 [0.16, 0.18] (N_train = 1,438);
the target 0.3 sits between them with margin on both sides.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from diffaudit.cli import main
from tests.e2e import test_embedded

embedded_server = test_embedded.embedded_server  # the embedded deployment's fixture: a server on SQLite

TARGET = "0.3"


def gate(checkpoint: Path, tmp_path: Path, max_samples: int, *where: str) -> tuple[int, dict]:
    """Run the gate with `where` (server options, extra criteria) and read its JSON report."""
    code = main(
        [
            "gate",
            *where,
            "--checkpoint",
            str(checkpoint),
            "--dataset",
            "digits",
            "--min-irs",
            TARGET,
            "--max-samples",
            str(max_samples),
            "--steps",
            "10",
            "--batch-size",
            "32",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--junit",
            str(tmp_path / "report.xml"),
            "--json",
            str(tmp_path / "report.json"),
        ]
    )
    return code, json.loads((tmp_path / "report.json").read_text())


def test_the_overfitted_model_is_rejected_after_a_small_fraction_of_its_samples(
    tiny_overfit_model: Path, tmp_path: Path
) -> None:
    code, report = gate(tiny_overfit_model, tmp_path, max_samples=1024)
    assert code == 1 and report["outcome"] == "rejected", report
    evidence = report["evidence"]
    assert evidence["rule"] == "spending" and evidence["target"] == 0.3
    assert evidence["samples_generated"] <= 1024 // 4, "rejected within the first quarter of the planned samples"
    assert evidence["distinct"] <= evidence["threshold"] and evidence["probability"] < evidence["alpha"]
    suite = ET.parse(tmp_path / "report.xml").getroot()
    assert suite.get("failures") == "1" and suite.find("testcase/failure") is not None
    assert Path(report["evaluation"], "irs/distinct_curve.png").is_file()


def test_the_healthy_model_passes(tiny_demo_model: Path, tmp_path: Path) -> None:
    code, report = gate(tiny_demo_model, tmp_path, max_samples=256)
    assert code == 0 and report["outcome"] == "pass", report
    assert report["evidence"]["irs_inf_lower"] > float(TARGET)
    assert report["evidence"]["n_sample"] == 256
    suite = ET.parse(tmp_path / "report.xml").getroot()
    assert suite.get("failures") == "0" and suite.get("errors") == "0"


def test_the_gate_through_a_server_rejects_the_overfitted_model(
    embedded_server: tuple[str, str], tiny_overfit_model: Path, tmp_path: Path
) -> None:
    url, token = embedded_server
    code, report = gate(tiny_overfit_model, tmp_path, 1024, "--server", url, "--token", token)
    assert code == 1 and report["outcome"] == "rejected", report
    evidence = report["evidence"]
    assert evidence["samples_generated"] <= 1024 // 4 and evidence["distinct"] <= evidence["threshold"]
    assert report["evaluation"].startswith("ev")


def test_several_criteria_are_measured_in_one_run_and_a_failing_one_rejects(
    tiny_demo_model: Path, tmp_path: Path
) -> None:
    code, report = gate(tiny_demo_model, tmp_path, 256, "--max-fid", "0", "--min-recall", "0", "--max-copy-rate", "1")
    assert code == 1 and report["outcome"] == "rejected", report  # no FID is 0: the FID criterion fails
    criteria = {c["name"]: c for c in report["criteria"]}
    assert list(criteria) == ["irs_diversity", "fid", "recall", "copy_rate"]
    assert criteria["irs_diversity"]["verdict"] == "pass" and criteria["irs_diversity"]["value"] > float(TARGET)
    fid = criteria["fid"]
    assert fid["verdict"] == "fail" and fid["value"] > 0 and fid["interval"][0] <= fid["value"] <= fid["interval"][1]
    assert criteria["recall"]["verdict"] == "pass" and 0 <= criteria["recall"]["value"] <= 1
    copies = criteria["copy_rate"]
    assert copies["verdict"] == "pass" and copies["interval"][0] <= copies["value"] <= copies["interval"][1]
    assert report["reason"].startswith("1 of 4 criteria failed: fid ")
    suite = ET.parse(tmp_path / "report.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("4", "1", "0")
    assert Path(report["evaluation"], "distribution/metrics.png").is_file()


def test_an_early_rejection_leaves_the_other_criteria_not_evaluated(tiny_overfit_model: Path, tmp_path: Path) -> None:
    code, report = gate(tiny_overfit_model, tmp_path, 1024, "--max-fid", "1e9", "--max-copy-rate", "1")
    assert code == 1 and report["outcome"] == "rejected", report
    assert report["evidence"]["samples_generated"] <= 1024 // 4, "still rejected as early as the IRS gate alone"
    assert [c["verdict"] for c in report["criteria"]] == ["fail", "not evaluated", "not evaluated"]
    suite = ET.parse(tmp_path / "report.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "2")
    assert not Path(report["evaluation"], "distribution").exists()


def test_several_criteria_through_a_server(
    embedded_server: tuple[str, str], tiny_demo_model: Path, tmp_path: Path
) -> None:
    url, token = embedded_server
    criteria = ("--max-fid", "1e9", "--min-coverage", "0", "--max-copy-rate", "1")
    code, report = gate(tiny_demo_model, tmp_path, 256, "--server", url, "--token", token, *criteria)
    assert code == 0 and report["outcome"] == "pass", report
    assert [(c["name"], c["verdict"]) for c in report["criteria"]] == [
        ("irs_diversity", "pass"),
        ("fid", "pass"),
        ("coverage", "pass"),
        ("copy_rate", "pass"),
    ]
    assert all(c["value"] is not None and c["interval"] is not None for c in report["criteria"])
    assert report["reason"] == "all 4 criteria pass"


def test_the_gate_against_a_baseline_through_a_server(
    embedded_server: tuple[str, str], tiny_demo_model: Path, tmp_path: Path
) -> None:
    url, token = embedded_server
    server = ("--server", url, "--token", token)
    code, accepted = gate(tiny_demo_model, tmp_path, 256, *server)
    assert code == 0, accepted
    code, report = gate(tiny_demo_model, tmp_path, 256, *server, "--baseline", accepted["evaluation"])
    assert code == 0 and report["outcome"] == "pass", report  # the same checkpoint: no difference
    compared = report["criteria"][-1]
    assert (compared["name"], compared["verdict"], compared["value"]) == ("irs_diversity_vs_baseline", "pass", 0.0)
    suite = ET.parse(tmp_path / "report.xml").getroot()
    assert suite.get("tests") == "2"
    code, refused = gate(tiny_demo_model, tmp_path, 128, *server, "--baseline", accepted["evaluation"])
    assert code == 2 and refused["outcome"] == "error", refused  # another sample count: not paired
    assert "422" in refused["reason"] and "sample.n" in refused["reason"], refused["reason"]
