"""The committed reports are what `.ci/gpu-reports reports` makes from the committed data, and that stage removes
the reports an earlier run left and nothing else (the `reports` package lives in the same folder)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from engines.spec import COMPONENTS

ROOT = Path(__file__).resolve().parents[2]
REPORTS = ROOT / "reports"


def results_from_committed_data(results: Path) -> None:
    """The results folder of a run, as the stage lays it out in reports/data/ (the inverse of its copies)."""
    for f in sorted((REPORTS / "data").glob("*.json")):
        component, _, rest = f.name.partition("-")
        if component in COMPONENTS and rest.startswith("accuracy-"):
            dest = results / "accuracy" / component / rest
        elif component == "faults" and rest.startswith("accuracy-"):
            dest = results / "faults" / rest
        else:
            dest = results / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)
    (results / "profiles").mkdir()
    for f in [*REPORTS.glob("profile-*.md"), *REPORTS.glob("ceilings-*.md")]:
        shutil.copyfile(f, results / "profiles" / f.name)


def test_the_reports_stage_remakes_the_committed_reports_and_keeps_other_files(tmp_path):
    # the stage runs from the folder above its script: a copy of the script, so that nothing here is written
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "gpu-reports", tmp_path / ".ci" / "gpu-reports")
    results, out = tmp_path / "results" / "gpu", tmp_path / "reports"
    results_from_committed_data(results)
    # the image grids of pd.md read the run's images, which are not committed: stand-ins at the same paths; but for
    # the first recipe, a grid made where its images were (a run whose images were made on several machines)
    quality = json.loads((results / "quality.json").read_text())
    shown = [c for c in quality["comparisons"] if any("png" in r for r in c["rows"])]
    made_elsewhere = f"pd-{Path(shown[0]['candidate']).name}.png"
    Image.new("RGB", (8, 8), "red").save(results / made_elsewhere)
    for row in (r for c in shown[1:] for r in c["rows"]):
        for key in ("png", "reference_png"):
            if key in row:
                (tmp_path / row[key]).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8)).save(tmp_path / row[key])
    kept = {"scaling.py": "# a module beside the reports\n", "notes.md": "mine\n"}
    out.mkdir()
    for name, text in kept.items():
        (out / name).write_text(text)
    stale = ["pd-a-recipe-no-longer-run.png", "profile-gone-uvit.md", "scaling.png", "data/bench-old.json"]
    (out / "data").mkdir()
    for name in stale:
        (out / name).write_bytes(b"an earlier run's")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    proc = subprocess.run(["bash", ".ci/gpu-reports", "reports"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    for name, text in kept.items():
        assert (out / name).is_file() and (out / name).read_text() == text, f"the stage removed or changed {name}"
    assert (out / made_elsewhere).read_bytes() == (results / made_elsewhere).read_bytes()
    for name in stale:
        assert not (out / name).is_file() or (out / name).read_bytes() != b"an earlier run's", f"{name} was left"
    committed = sorted(p.name for p in REPORTS.glob("*.md"))
    assert committed == sorted(p.name for p in out.glob("*.md") if p.name not in kept)
    for name in committed:
        assert (out / name).read_bytes() == (REPORTS / name).read_bytes(), f"reports/{name} is not what its data makes"
    data = sorted(p.name for p in (REPORTS / "data").glob("*.json"))
    assert data == sorted(p.name for p in (out / "data").glob("*.json"))
    for name in data:
        assert (out / "data" / name).read_bytes() == (REPORTS / "data" / name).read_bytes(), name


def test_pd_without_the_runs_images_says_where_they_were_expected(tmp_path, monkeypatch):
    from reports.pd import write_report

    monkeypatch.chdir(tmp_path)  # no run's images here
    first = next(r["reference_png"] for c in json.loads((REPORTS / "data" / "quality.json").read_text())["comparisons"]
                 for r in c["rows"] if "reference_png" in r)  # fmt: skip
    with pytest.raises(FileNotFoundError, match=re.escape(f"{first} (or its .jpg) is not here") + ".*run's images are"):
        write_report([REPORTS / "data" / "quality.json"], tmp_path / "pd.md")
    # where the grids were made beside the images (a run whose images were made on several machines), they are kept
    quality = json.loads((REPORTS / "data" / "quality.json").read_text())
    names = [Path(c["candidate"]).name for c in quality["comparisons"] if any("png" in r for r in c["rows"])]
    for name in names:
        Image.new("RGB", (8, 8), "red").save(tmp_path / f"pd-{name}.png")
    made = {n: (tmp_path / f"pd-{n}.png").read_bytes() for n in names}
    write_report([REPORTS / "data" / "quality.json"], tmp_path / "pd.md", overwrite=True)
    assert {n: (tmp_path / f"pd-{n}.png").read_bytes() for n in names} == made
    assert all(f"(pd-{n}.png)" in (tmp_path / "pd.md").read_text() for n in names)
