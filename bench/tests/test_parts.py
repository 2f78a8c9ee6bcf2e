""".ci/gpu-parts: a run's steps made over calls and machines that each hold a command for seconds, brought back,
taken in, and gathered into one results folder."""

import os
import subprocess
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

STEPS = """\
# a group of two steps that share a results folder, and one of its own that fails
g.first   echo "$UNIDIFFUSER_COMMIT" > "$RESULTS/x.json"; echo image > "$RESULTS/x.png"; touch "$RESULTS/done"
g.second  sleep 5; echo two > "$RESULTS/y.json"
other     echo three > "$RESULTS/x.json"; touch "$RESULTS/done"; exit 3
"""


def parts(*args: str, work: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WORK": str(work), **env}
    proc = subprocess.run(["bash", ".ci/gpu-parts", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def members(tar: Path) -> set[str]:
    with tarfile.open(tar) as t:
        return {m.name for m in t.getmembers() if m.isfile()}


def test_a_run_in_parts_resumes_on_a_new_machine_and_gathers_into_one_results_folder(tmp_path):
    run, code, work = tmp_path / "run", tmp_path / "code", tmp_path / "machine-1"
    run.mkdir(), code.mkdir()
    (run / "commit").write_text("c0ffee\n")
    (run / "steps").write_text(STEPS)

    # a call shorter than the steps: what finished comes back; the rest runs on, detached
    out1 = tmp_path / "out1"
    first = parts("poll", str(run), str(code), "1", str(out1), work=work)
    assert sorted(p.name for p in out1.glob("*.tar")) == ["part-g.first.tar"], first.stdout
    assert "not finished: g.second other" in first.stdout
    assert members(out1 / "part-g.first.tar") == {"g/x.json", "g/done", "g/g.first.log", "g/g.first.exit"}  # no PNG
    time.sleep(1)  # the next call finds the run going, and starts nothing again
    out2 = tmp_path / "out2"
    second = parts("poll", str(run), str(code), "60", str(out2), work=work)
    assert sorted(p.name for p in out2.glob("*.tar")) == ["part-g.second.tar", "part-other.tar"], second.stdout
    assert members(out2 / "part-g.second.tar") == {"g/y.json", "g/g.second.log", "g/g.second.exit"}  # only its own
    assert (out2 / "log").read_text().count("== g.second: exit 0") == 1

    absorbed = parts("absorb", str(run), *map(str, [*out1.glob("*.tar"), *out2.glob("*.tar")]), work=work).stdout
    assert (run / "done").read_text().split() == ["g.first", "g.second"]
    assert "other: exit status 3, not done" in absorbed
    assert (run / "parts" / "g" / "x.json").read_text().strip() == "c0ffee"  # the run's commit, not the tree's

    # a new machine runs only the step not done, and only where ONLY names it
    out3 = tmp_path / "out3"
    parts("poll", str(run), str(code), "60", str(out3), work=tmp_path / "machine-2", ONLY="g\\..*")
    assert not list(out3.glob("*.tar"))
    parts("poll", str(run), str(code), "60", str(out3), work=tmp_path / "machine-3")
    assert sorted(p.name for p in out3.glob("*.tar")) == ["part-other.tar"]

    results = tmp_path / "results"
    parts("gather", str(run), str(results), work=work)
    gathered = sorted(str(p.relative_to(results)) for p in results.rglob("*"))
    assert gathered == ["done", "done-other", "x-other.json", "x.json", "y.json"]
    assert (results / "x.json").read_text().strip() == "c0ffee"
