"""The gate's logic: verdicts from finished jobs, the JUnit and JSON reports, the spec it asks for."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from diffaudit import gate
from diffaudit.spec import EvaluationSpec

IRS_RESULT = {
    "headline": "IRS_inf 0.45 [0.41, 0.50] (target 0.3): pass",
    "passed": True,
    "target": 0.3,
    "k_min": 100,
    "decision": {"rule": "sequential", "reject": False},
    "synthetic": {
        "irs_inf": 0.45,
        "irs_inf_lower": 0.41,
        "irs_inf_upper": 0.5,
        "n_learned": 200,
        "n_sample": 256,
        "n_train": 1438,
        "s_hat": 647,
    },
    "adjusted": {"irs_inf_a": 0.6},
}


def test_gate_spec_is_a_valid_evaluation_with_early_rejection() -> None:
    options = gate.GateOptions(min_irs=0.3, alpha_e=0.01, max_samples=512, steps=10, rule="bound")
    spec = EvaluationSpec.model_validate(gate.gate_spec(options))
    assert spec.stages == ("sample", "features", "irs")
    assert (spec.sample.n, spec.sample.steps) == (512, 10)
    assert (spec.irs.target, spec.irs.alpha_e, spec.irs.rule, spec.irs.early_rejection) == (0.3, 0.01, "bound", True)


def test_verdicts_and_exit_codes() -> None:
    passed = gate.verdict_from("succeeded", {"stages": {"irs": IRS_RESULT}}, evaluation="ev_1")
    assert (passed.outcome, passed.exit_code, passed.reason) == ("pass", 0, IRS_RESULT["headline"])
    assert passed.evidence["irs_inf_lower"] == 0.41 and passed.evidence["irs_inf_a"] == 0.6
    failed = gate.verdict_from("succeeded", {"stages": {"irs": {**IRS_RESULT, "passed": False}}})
    assert (failed.outcome, failed.exit_code) == ("rejected", 1)  # below target at the end
    evidence = {"samples_drawn": 21, "distinct": 17}
    rejected = gate.verdict_from("rejected", {"stages": {}, "rejection": evidence}, "IRS early rejection ...")
    assert (rejected.outcome, rejected.exit_code, rejected.evidence) == ("rejected", 1, evidence)
    broken = gate.verdict_from("failed", None, "stage sample: bad checkpoint")
    assert (broken.outcome, broken.exit_code, broken.reason) == ("error", 2, "stage sample: bad checkpoint")
    assert gate.verdict_from("succeeded", {"stages": {}}).outcome == "error"


def test_junit_and_json_reports(tmp_path: Path) -> None:
    rejected = gate.Verdict("rejected", "IRS early rejection", {"distinct": 17}, "ev_2")
    gate.write_junit(rejected, tmp_path / "r.xml")
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "1", "0")
    failure = suite.find("testcase/failure")
    assert failure is not None and failure.get("message") == "IRS early rejection"
    assert json.loads(failure.text or "") == {"distinct": 17}
    gate.write_junit(gate.Verdict("error", "boom"), tmp_path / "e.xml")
    assert ET.parse(tmp_path / "e.xml").getroot().find("testcase/error") is not None
    gate.write_junit(gate.Verdict("pass", "ok"), tmp_path / "p.xml")
    case = ET.parse(tmp_path / "p.xml").getroot().find("testcase")
    assert case is not None and case.find("failure") is None and case.find("error") is None
    gate.write_json(rejected, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == {
        "outcome": "rejected",
        "reason": "IRS early rejection",
        "evidence": {"distinct": 17},
        "evaluation": "ev_2",
        "exit_code": 1,
    }


def test_checkpoint_folder_takes_a_folder_or_a_zip_with_one_wrapping_folder(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}")
    assert gate.checkpoint_folder(folder, tmp_path / "x") == folder
    with zipfile.ZipFile(tmp_path / "model.zip", "w") as zf:
        zf.write(folder / "unet" / "config.json", "model/unet/config.json")
    extracted = gate.checkpoint_folder(tmp_path / "model.zip", tmp_path / "y")
    assert extracted == tmp_path / "y" / "model" and (extracted / "unet" / "config.json").is_file()
    with pytest.raises(FileNotFoundError):
        gate.checkpoint_folder(tmp_path / "missing", tmp_path / "z")


def test_the_cli_reports_an_error_verdict_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from diffaudit.cli import main

    args = ["gate", "--checkpoint", str(tmp_path / "missing"), "--dataset", "digits", "--min-irs", "0.5"]
    code = main([*args, "--cache-dir", str(tmp_path / "c"), "--json", str(tmp_path / "v.json")])
    assert code == 2 and "ERROR (exit 2)" in capsys.readouterr().out
    assert json.loads((tmp_path / "v.json").read_text())["outcome"] == "error"
