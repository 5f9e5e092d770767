"""laser-sim ablate (sim.tissue.ablate.main) and the open-loop Python API."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sim.tissue import AblationResult, run_open_loop
from sim.tissue import ablate
from sim.tissue.ablate import main

FAST = ["--grid-mm", "2", "--threads", "1"]  # 32^3 voxels: the CLI's behaviour, not the physics


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_json_metrics(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, ["--scenario", "tumour_20mm_2fibres", "--power", "0=2", "--power", "1=2", "--seconds", "120", "--json", *FAST])
    assert code == 0 and err == ""
    r = json.loads(out)
    assert r["scenario"] == "tumour_20mm_2fibres" and r["powers_w"] == {"0": 2.0, "1": 2.0} and r["grid_mm"] == 2.0
    assert r["energy_j"] == pytest.approx(480.0)
    assert r["coagulated_volume_ml"] > 0.1
    assert [f["channel"] for f in r["fibres"]] == [0, 1]
    assert all(f["along_mm"] > 0 and f["across_mm"] > 0 for f in r["fibres"])
    assert 0 < r["tumour"]["target_coagulated_fraction"] <= r["tumour"]["tumour_coagulated_fraction"] <= 1
    assert r["max_tip_temp_c"] > 50
    assert {p["role"] for p in r["probes"]} == {"tip", "margin"}
    assert abs(r["energy_balance"]["residual_fraction"]) < 1e-6
    assert r["performance"]["real_time_factor"] > 1


def test_protected_structures_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--scenario", "vessel_protected_4fibres", "--seconds", "60", "--json", *FAST] + [f"--power={c}=1.5" for c in range(4)]
    code, out, _ = _run(capsys, argv)
    assert code == 0
    (gb,) = json.loads(out)["protected"]
    assert gb["name"] == "gallbladder" and gb["max_temp_c"] >= 37.0 and gb["max_cem43_min"] >= 0.0


def test_human_summary_and_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    code, out, err = _run(capsys, ["--scenario", "single_fibre", "--power", "0=1.5", "--seconds", "60", "--png", str(png), *FAST])
    assert code == 0 and err == ""
    assert "coagulated volume" in out and "fibre ch0" in out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 400 and height > 400


BAD = [
    (["--power", "0=1", "--seconds", "10"], "the following arguments are required: --scenario"),
    (["--scenario", "single_fibre", "--power", "0:1", "--seconds", "10"], "--power 0:1: expected CH=WATTS"),
    (["--scenario", "single_fibre", "--power", "x=1", "--seconds", "10"], "channel 'x' is not an integer"),
    (["--scenario", "single_fibre", "--power", "0=lots", "--seconds", "10"], "power 'lots' is not a number"),
    (["--scenario", "single_fibre", "--power", "3=1", "--seconds", "10"], "no fibre on LS-4 channel 3"),
    (["--scenario", "single_fibre", "--power", "0=11", "--seconds", "10"], "expected 0 to 10 W, got 11"),
    (["--scenario", "single_fibre", "--power", "0=1", "--power", "0=2", "--seconds", "10"], "channel 0 given twice"),
    (["--scenario", "single_fibre", "--seconds", "10"], "--power: give at least one"),
    (["--scenario", "single_fibre", "--power", "0=1", "--seconds", "-5"], "--seconds: expected a positive number"),
    (["--scenario", "single_fibre", "--power", "0=1", "--seconds", "soon"], "argument --seconds: invalid float value"),
    (["--scenario", "nowhere.toml", "--power", "0=1", "--seconds", "10"], "scenario: no such file nowhere.toml"),
    (["--scenario", "single_fibre", "--power", "0=1", "--seconds", "10", "--grid-mm", "0.01"], "--grid-mm: expected 0.1 to 5"),
    (["--scenario", "single_fibre", "--power", "0=1", "--seconds", "10", "--png", "/no/such/dir/x.png"], "no such directory"),
    (["--scenario", "single_fibre", "--power", "0=1", "--seconds", "10", "--colour"], "unrecognized arguments: --colour"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, out, err = _run(capsys, argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("laser-sim ablate: ") and message in err


def test_a_bad_scenario_file_names_the_field(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[grid]\nsize_mm = [32, 32, 32]\nspacing_mm = 1.0\n[[fibres]]\nchannel = 0\ntip_mm = [0, 0]\ndirection = [0, 0, 1]\n')
    code, _, err = _run(capsys, ["--scenario", str(f), "--power", "0=1", "--seconds", "1"])
    assert code == 2 and err == "laser-sim ablate: scenario fibres[0].tip_mm: expected 3 numbers, got 2\n"


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, ["--help"])
    assert code == 0 and "--scenario" in out


def test_progress_goes_to_stderr_and_stdout_stays_json(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ablate, "PROGRESS_AFTER_S", 0.0)
    monkeypatch.setattr(ablate, "PROGRESS_EVERY_S", 0.0)
    code, out, err = _run(capsys, ["--scenario", "single_fibre", "--power", "0=1", "--seconds", "60", "--json", *FAST])
    assert code == 0
    json.loads(out)
    assert "laser-sim ablate: 10/60 s of tissue time" in err and "60/60 s" in err


def _subprocess(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from sim.tissue.ablate import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parent.parent)


def test_as_a_subprocess() -> None:
    ok = _subprocess("--scenario", "single_fibre", "--power", "0=1.5", "--seconds", "30", "--json", *FAST)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["seconds"] == 30.0
    bad = _subprocess("--scenario", "single_fibre", "--power", "7=1", "--seconds", "30")
    assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1


def test_run_open_loop_api() -> None:
    result = run_open_loop("single_fibre", {0: 1.0}, 60.0, grid_mm=2.0, threads=1)
    assert isinstance(result, AblationResult)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.seconds = 1.0  # type: ignore[misc]
    assert json.loads(result.to_json())["coagulated_volume_ml"] == pytest.approx(result.coagulated_volume_ml, rel=1e-5)
    with pytest.raises(ValueError, match="no fibre on LS-4 channel 2"):
        run_open_loop("single_fibre", {2: 1.0}, 60.0)
