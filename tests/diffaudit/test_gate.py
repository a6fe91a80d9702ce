"""The gate's logic: verdicts from finished jobs, the JUnit and JSON reports, the spec it asks for."""

from __future__ import annotations

import dataclasses
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
        "criteria": [],
    }


DISTRIBUTION_RESULT = {
    "headline": "FID 52.1 ...",
    **{"fid": 52.1, "kid_mean": 0.01, "kid_std": 0.002, "precision": 0.7, "recall": 0.4, "density": 0.9},
    **{"coverage": 0.8, "vendi": 5.0, "n_real": 1438, "n_fake": 256, "k": 3},
    "intervals": {"fid": [48.0, 56.2], "precision": [0.65, 0.75], "kid_mean": [0.008, 0.012], "vendi": None},
}
MEMORIZATION_RESULT = {"headline": "...", "spaces": {"pixels": {"extraction": {"n_flagged": 3, "n_generated": 256}}}}
SEVERAL = gate.GateOptions(min_irs=0.3, max_fid=40, min_precision=0.6, min_vendi=4, max_copy_rate=0.05)


def test_the_spec_adds_the_stages_the_criteria_need() -> None:
    spec = EvaluationSpec.model_validate(gate.gate_spec(SEVERAL))
    assert spec.stages == ("sample", "features", "irs", "distribution", "memorization")
    assert (spec.memorization.space, spec.memorization.max_images, spec.memorization.n_steps) == ("pixels", 1, 1)
    assert spec.irs.early_rejection
    only_fid = EvaluationSpec.model_validate(gate.gate_spec(gate.GateOptions(min_irs=0.3, max_fid=40)))
    assert only_fid.stages == ("sample", "features", "irs", "distribution")
    assert [c.name for c in SEVERAL.criteria()] == ["irs_diversity", "fid", "precision", "vendi", "copy_rate"]


def test_every_criterion_is_reported_with_value_interval_and_verdict() -> None:
    results = {"stages": {"irs": IRS_RESULT, "distribution": DISTRIBUTION_RESULT, "memorization": MEMORIZATION_RESULT}}
    verdict = gate.verdict_from("succeeded", results, evaluation="ev_3", options=SEVERAL)
    assert (verdict.outcome, verdict.exit_code) == ("rejected", 1)  # FID 52.1 > 40
    by_name = {c.name: c for c in verdict.criteria}
    assert list(by_name) == ["irs_diversity", "fid", "precision", "vendi", "copy_rate"]
    irs = by_name["irs_diversity"]
    assert (irs.value, irs.interval, irs.threshold, irs.verdict) == (0.45, [0.41, 0.5], 0.3, "pass")
    fid = by_name["fid"]
    assert (fid.value, fid.interval, fid.threshold, fid.bound, fid.verdict) == (52.1, [48.0, 56.2], 40, "max", "fail")
    assert (by_name["precision"].verdict, by_name["precision"].interval) == ("pass", [0.65, 0.75])
    assert (by_name["vendi"].verdict, by_name["vendi"].interval) == ("pass", None)  # no replicates: no interval
    copies = by_name["copy_rate"]
    assert copies.value == pytest.approx(3 / 256) and copies.verdict == "pass" and "3 of 256" in copies.detail
    assert (
        verdict.reason
        == "1 of 5 criteria failed: fid 52.1 [48, 56.2], at most 40: fail (256 generated vs 1438 training)"
    )
    assert "criterion fid 52.1 [48, 56.2], at most 40: fail" in gate.format_verdict(verdict)
    relaxed_fid = dataclasses.replace(SEVERAL, max_fid=60)
    relaxed = gate.verdict_from("succeeded", results, options=relaxed_fid)
    assert (relaxed.outcome, relaxed.reason) == ("pass", "all 5 criteria pass")
    failing_irs = {"stages": {**results["stages"], "irs": {**IRS_RESULT, "passed": False}}}
    assert gate.verdict_from("succeeded", failing_irs, options=relaxed_fid).criteria[0].verdict == "fail"
    no_distribution = {"stages": {"irs": IRS_RESULT, "memorization": MEMORIZATION_RESULT}}
    missing = gate.verdict_from("succeeded", no_distribution, options=SEVERAL)
    assert missing.outcome == "error" and "no distribution result" in missing.reason


def test_the_copy_rate_interval_is_clopper_pearson() -> None:
    none = {"spaces": {"pixels": {"extraction": {"n_flagged": 0, "n_generated": 64}}}}
    value, interval, _ = gate.copy_rate(none)
    assert value == 0 and interval is not None
    assert interval[0] == 0 and interval[1] == pytest.approx(1 - 0.025 ** (1 / 64))  # exact upper bound at 0 of n


def test_after_an_early_rejection_the_other_criteria_are_not_evaluated(tmp_path: Path) -> None:
    evidence = {"samples_generated": 21, "distinct": 17, "target": 0.3}
    verdict = gate.verdict_from(
        "rejected", {"stages": {}, "rejection": evidence}, "IRS early rejection", options=SEVERAL
    )
    assert (verdict.outcome, verdict.exit_code, verdict.evidence) == ("rejected", 1, evidence)
    assert [c.verdict for c in verdict.criteria] == ["fail"] + ["not evaluated"] * 4
    assert all(c.value is None for c in verdict.criteria)
    gate.write_junit(verdict, tmp_path / "r.xml")
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == (
        "5",
        "1",
        "4",
        "0",
    )
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["irs_diversity", "fid", "precision", "vendi", "copy_rate"]
    failure = cases[0].find("failure")
    assert failure is not None and json.loads(failure.text or "") == evidence
    assert all(c.find("skipped") is not None for c in cases[1:])


def test_the_junit_report_has_one_case_per_criterion(tmp_path: Path) -> None:
    results = {"stages": {"irs": IRS_RESULT, "distribution": DISTRIBUTION_RESULT, "memorization": MEMORIZATION_RESULT}}
    gate.write_junit(gate.verdict_from("succeeded", results, options=SEVERAL), tmp_path / "r.xml")
    suite = ET.parse(tmp_path / "r.xml").getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("5", "1", "0")
    failed = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["fid"]
    assert json.loads(failed[0].find("failure").text or "")["value"] == 52.1  # type: ignore[union-attr]


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


def compared(metric: str, verdict: str, difference: float, higher_is_better: bool) -> dict:
    """One metric of a (fake) POST /v1/comparisons answer."""
    half = 0.01
    return {
        "metric": metric,
        "baseline": 0.5,
        "candidate": 0.5 + difference,
        "difference": difference,
        "interval": [difference - half, difference + half],
        "verdict": verdict,
        "higher_is_better": higher_is_better,
        "error_rate": 0.05,
        "n_pairs": 256,
    }


BASELINE_OPTIONS = gate.GateOptions(min_irs=0.3, max_copy_rate=1.0)


def passing_verdict() -> gate.Verdict:
    irs = gate.CriterionResult("irs_diversity", "min", 0.3, 0.45, [0.41, 0.5], "pass")
    copies = gate.CriterionResult("copy_rate", "max", 1.0, 0.0, [0.0, 0.01], "pass")
    return gate.Verdict("pass", "all 2 criteria pass", {"irs_inf": 0.45}, "ev_cand", [irs, copies])


def test_a_candidate_worse_than_its_baseline_is_rejected_though_it_passes_the_thresholds() -> None:
    comparison = {
        "metrics": [
            compared("irs_inf", "worse", -0.08, True),
            compared("copy_rate_pixels", "not distinguishable", 0.0, False),
            compared("nn_distance_pixels", "worse", -0.5, True),  # measures no gate criterion: not gated
        ]
    }
    verdict = gate.with_baseline(passing_verdict(), comparison, "ev_base", BASELINE_OPTIONS)
    assert (verdict.outcome, verdict.exit_code) == ("rejected", 1)
    names = [c.name for c in verdict.criteria]
    assert names == ["irs_diversity", "copy_rate", "irs_diversity_vs_baseline", "copy_rate_vs_baseline"]
    irs = verdict.criteria[2]
    assert (irs.verdict, irs.value, irs.interval, irs.bound, irs.threshold) == (
        "fail",
        -0.08,
        [-0.09, -0.07],
        "min",
        0.0,
    )
    assert "worse than baseline ev_base" in irs.detail and verdict.criteria[3].verdict == "pass"
    assert verdict.reason.startswith("1 of 4 criteria failed: irs_diversity_vs_baseline -0.08")
    assert verdict.evaluation == "ev_cand" and verdict.evidence == {"irs_inf": 0.45}


def test_a_better_or_indistinguishable_candidate_passes_and_each_comparison_is_a_junit_case(tmp_path: Path) -> None:
    comparison = {
        "metrics": [compared("irs_inf", "better", 0.05, True), compared("copy_rate_pixels", "better", -0.1, False)]
    }
    verdict = gate.with_baseline(passing_verdict(), comparison, "ev_base", BASELINE_OPTIONS)
    assert (verdict.outcome, verdict.reason) == ("pass", "all 4 criteria pass")
    assert verdict.criteria[3].bound == "max"  # copy rate: lower is better
    gate.write_junit(verdict, tmp_path / "b.xml")
    suite = ET.parse(tmp_path / "b.xml").getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("4", "0")
    assert [case.get("name") for case in suite.iter("testcase")][2:] == [
        "irs_diversity_vs_baseline",
        "copy_rate_vs_baseline",
    ]
    gate.write_json(verdict, tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["criteria"][2]["name"] == "irs_diversity_vs_baseline"


def test_baseline_comparison_only_gates_the_criteria_asked_for() -> None:
    irs_only = gate.GateOptions(min_irs=0.3)
    alone = gate.Verdict("pass", "IRS headline", {}, "ev_cand", [passing_verdict().criteria[0]])
    comparison = {"metrics": [compared("irs_inf", "not distinguishable", 0.0, True)]}
    verdict = gate.with_baseline(alone, comparison, "ev_base", irs_only)
    assert [c.name for c in verdict.criteria] == ["irs_diversity", "irs_diversity_vs_baseline"]
    assert verdict.outcome == "pass"
    nothing = gate.with_baseline(alone, {"metrics": [compared("ds_rate", "worse", -0.1, True)]}, "ev_b", irs_only)
    assert nothing.outcome == "error" and "no gated criterion" in nothing.reason


def test_an_early_rejection_or_an_error_is_not_compared() -> None:
    early = gate.Verdict("rejected", "IRS early rejection", {"distinct": 17}, "ev_cand", [])
    verdict = gate.with_baseline(early, None, "ev_base", BASELINE_OPTIONS)
    assert verdict.outcome == "rejected"
    assert [(c.name, c.verdict) for c in verdict.criteria] == [
        ("irs_diversity_vs_baseline", "not evaluated"),
        ("copy_rate_vs_baseline", "not evaluated"),
    ]
    broken = gate.Verdict("error", "boom")
    assert gate.with_baseline(broken, {"metrics": []}, "ev_base", BASELINE_OPTIONS) is broken


class RefusingClient:
    """A server whose comparisons API refuses (422) because the baseline's spec differs."""

    def push_checkpoint(self, path: Path) -> dict:
        return {"id": "ck_1"}

    def evaluate(self, checkpoint_id: str, dataset_id: str, spec: dict) -> dict:
        return {"id": "ev_cand"}

    def wait(self, evaluation_id: str, out: object) -> dict:
        return {"id": evaluation_id, "status": "succeeded"}

    def results(self, evaluation_id: str) -> dict:
        return {"stages": {"irs": IRS_RESULT}}

    def compare(self, baseline: str, candidate: str) -> dict:
        from diffaudit.client import ApiError

        raise ApiError(422, "invalid_input", "the evaluations differ ...: spec.sample.n: 512 vs 256")


def test_a_refused_comparison_is_an_error_verdict_with_the_servers_message(tmp_path: Path) -> None:
    import io

    options = gate.GateOptions(min_irs=0.3)
    verdict = gate.run_on_server(RefusingClient(), tmp_path, "digits", options, io.StringIO(), baseline="ev_base")
    assert (verdict.outcome, verdict.exit_code, verdict.evaluation) == ("error", 2, "ev_cand")
    assert "baseline ev_base refused" in verdict.reason and "spec.sample.n: 512 vs 256" in verdict.reason


def test_baseline_in_process_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from diffaudit.cli import main

    argv = ["gate", "--checkpoint", str(tmp_path), "--dataset", "digits", "--min-irs", "0.3", "--baseline", "ev_b"]
    assert main([*argv, "--server", ""]) == 2
    assert "--baseline compares two jobs on a server" in capsys.readouterr().out
