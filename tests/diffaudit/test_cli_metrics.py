"""`diffaudit metrics`: the distribution metrics of two .npy files as JSON, bad files exit 2 with a message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffaudit.cli import main
from diffaudit.metrics.distribution import METRIC_KEYS, distribution_metrics

RNG = np.random.default_rng(0)
REAL = RNG.normal(size=(120, 8)).astype(np.float32)
FAKE = (RNG.normal(size=(80, 8)) + 0.5).astype(np.float32)


@pytest.fixture()
def files(tmp_path: Path) -> tuple[str, str]:
    np.save(tmp_path / "real.npy", REAL)
    np.save(tmp_path / "fake.npy", FAKE)
    return str(tmp_path / "real.npy"), str(tmp_path / "fake.npy")


def test_metrics_prints_every_value_of_the_metric_functions_as_json(files, capsys) -> None:
    real, fake = files
    options = ["--k", "5", "--kid-subsets", "7", "--kid-subset-size", "50", "--bootstrap", "10"]
    assert main(["metrics", "--real", real, "--fake", fake, *options]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = distribution_metrics(REAL, FAKE, k=5, kid_subsets=7, kid_subset_size=50, bootstrap=10)
    assert set(METRIC_KEYS) <= printed.keys()
    for key in METRIC_KEYS:
        assert printed[key] == pytest.approx(expected[key], rel=1e-12), key
    assert printed["intervals"]["fid"] == pytest.approx(expected["intervals"]["fid"])
    assert (printed["n_real"], printed["n_fake"], printed["k"], printed["kid_subset_size"]) == (120, 80, 5, 50)


def test_the_kid_subset_size_defaults_to_the_smaller_set_below_1000(files, capsys) -> None:
    real, fake = files
    assert main(["metrics", "--real", real, "--fake", fake, "--bootstrap", "0", "--moment-bootstrap", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["kid_subset_size"] == 80 and printed["intervals"]["fid"] is None


def bad_inputs(tmp_path: Path) -> list[tuple[list[str], str]]:
    real = str(tmp_path / "real.npy")
    np.save(tmp_path / "wide.npy", np.zeros((80, 9), np.float32))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "archive.npz", a=REAL)
    (tmp_path / "text.npy").write_text("not numpy")
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "ints.npy", np.zeros((80, 8), np.int64))
    return [
        (["--real", str(tmp_path / "missing.npy")], "--real"),
        (["--real", str(tmp_path)], "--real"),
        (["--fake", str(tmp_path / "wide.npy")], "differ in width: 8 and 9"),
        (["--fake", str(tmp_path / "objects.npy")], "--fake"),
        (["--fake", str(tmp_path / "archive.npz")], ".npz archive"),
        (["--fake", str(tmp_path / "text.npy")], "not a readable .npy file"),
        (["--fake", str(tmp_path / "empty.npy")], "not a readable .npy file"),
        (["--fake", str(tmp_path / "ints.npy")], "2-D float array"),
        (["--real", real, "--kid-subset-size", "500"], "KID subset size 500 exceeds"),
        (["--k", "0"], "--k: Input should be greater than or equal to 1"),
        (["--confidence", "1.5"], "--confidence: Input should be less than 1"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_a_bad_file_or_option_exits_2_with_a_message_not_a_traceback(files, tmp_path, capsys, case) -> None:
    args, fragment = bad_inputs(tmp_path)[case]
    real, fake = files
    defaults = {"--real": real, "--fake": fake}
    given = dict(zip(args[::2], args[1::2], strict=True))
    argv = ["metrics", *(x for key, value in {**defaults, **given}.items() for x in (key, value))]
    assert main([*argv, "--bootstrap", "0", "--moment-bootstrap", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err
