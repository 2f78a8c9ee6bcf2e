"""Accuracy results (results/accuracy-*.json from `pytest reference`) -> reports/accuracy.md and its plots.

The JSON holds tables: "rows" (one per engine and mark), "engines" (one verdict per engine), "perturbation" (marked
against unmarked output), "fp8_linears" (each FP8 linear against its emulation), "activations" (what the weights
make each layer do), "faults" (the fault matrix), "clean" (clean builds over several weight seeds) and "tests" (each
test's outcome: a test that failed before it could add rows shows there alone).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reports.common import ACCURACY_JSON, check_one_run, check_writable, env_header, read_result, sci  # noqa: E402

PRECISION_ORDER = ["fp32", "fp16", "bf16", "fp8"]
HEADROOM = 4.0  # a mark whose largest value is within this factor of its dtype's largest finite one is flagged
TARGETS = {  # reference/init.py's targets for the trained-like weights, as the report states them
    "update": "0.3-1", "attn_max_prob": ">= 3/L, median >= 30/L", "outlier": ">= 8 (full size)",
    "gn_mean_spread": ">= 10 in some groups", "guidance": "0.05-0.3", "logit_std": "-", "max_abs": "-",
}  # fmt: skip


# what one row of each table is about
KEYS = {
    "rows": ["engine", "mark"],
    "engines": ["engine"],
    "perturbation": ["engine"],
    "faults": ["component", "fault", "position", "precision"],
    "clean": ["component", "seed", "precision"],
    "tests": ["test"],
}


def read_accuracy(path: Path) -> dict:
    data = read_result(path, what=ACCURACY_JSON, keys=("env",))
    bad = [k for k, v in data.items() if not isinstance(v, list if k != "env" else dict)]
    if bad:
        raise ValueError(f"{path}: {bad} should hold a list of rows (env an object); expected {ACCURACY_JSON}")
    return data


def chronological(paths: list[Path]) -> list[Path]:
    """The result files by the date their run recorded, then by name: the report is the same whatever order they are
    given in, and a later run's row replaces an earlier one's."""
    dated = [(read_accuracy(p)["env"].get("date", ""), Path(p).name, Path(p)) for p in paths]
    return [p for _, _, p in sorted(dated)]


def load(paths: list[Path]) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
    """Each table merged over the files (split runs, xdist workers), oldest first; the oldest run's env."""
    if not paths:
        raise ValueError("no accuracy result files given")
    ordered = chronological(paths)
    data = [read_accuracy(p) for p in ordered]
    check_one_run([(p, d["env"]) for p, d in zip(ordered, data, strict=True)])
    names = {k for d in data for k in d if k != "env"}
    tables = {k: pd.DataFrame([row for d in data for row in d.get(k, [])]) for k in names}
    for k, key in KEYS.items():  # a run cut short and made again: its rows count once, the later run's
        if len(tables.get(k, [])):
            tables[k] = tables[k].drop_duplicates(key, keep="last")
    rows = tables.get("rows", pd.DataFrame())
    if len(rows):
        tables["rows"] = rows.assign(ratio=rows["rel_l2"] / rows["bound"], vs_plain=rows["rel_l2"] / rows["plain"])
    return tables, data[0]["env"]


def load_rows(paths: list[Path]) -> tuple[pd.DataFrame, dict[str, str]]:
    tables, env = load(paths)
    return tables.get("rows", pd.DataFrame()), env


def runs(paths: list[Path]) -> pd.DataFrame:
    """Where each merged file came from: its date, commit and GPU, and how many engines it holds."""
    rows = []
    for p in chronological(paths):
        data = read_accuracy(p)
        env = data["env"]
        engines = len({r["engine"] for r in data.get("rows", [])})
        rows.append(
            {"file": Path(p).name, **{k: env.get(k, "-") for k in ("date", "commit", "gpu")}, "engines": engines}
        )
    return pd.DataFrame(rows)


def summary(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per engine: its verdict and where it stands."""
    engines = tables.get("engines", pd.DataFrame())
    if not len(engines):
        return engines
    df = engines.set_index("engine")
    rows = tables["rows"]
    worst = rows.groupby("engine")["vs_plain"].max()
    out = pd.DataFrame({
        "precision": df["precision"], "approximations": df["approximations"], "status": df["status"],
        "first failing mark": df["first_failing_mark"], "unverifiable marks": df["unverifiable_marks"],
        "first unverifiable": df["first_unverifiable_mark"], "output rel L2": df["output_rel_l2"].map(sci),
        "worst engine/plain": worst.reindex(df.index).map(lambda v: f"{v:.2f}"),
    })  # fmt: skip
    if "end_to_end" in df:  # the output against the oracle run from the inputs (older runs judged only that way)
        out.insert(out.columns.get_loc("output rel L2") + 1, "output bound", df["output_bound"].map(sci))
        out.insert(out.columns.get_loc("output bound") + 1, "end to end", df["end_to_end"])
    moved = tables.get("perturbation")
    if moved is not None and len(moved):
        m = moved.set_index("engine")
        out["marks moved output"] = m["marks_moved_output"].reindex(out.index).map(sci)
        if "timed_output_rel_l2" in m:  # where marking changed the program, the unmarked build judged itself
            timed = m.apply(lambda r: "same program" if r["same_program"] else
                            f"{r['timed_output_rel_l2']:.3g} / {r['output_bound']:.3g}", axis=1)  # fmt: skip
            out["unmarked build: output error / bound"] = timed.reindex(out.index).fillna("-")
    fp8 = tables.get("fp8_linears")
    if fp8 is not None and len(fp8):
        fp8 = fp8.assign(r=fp8["rel_l2"] / fp8["bound"]).groupby("engine")["r"].max()
        out["FP8 linears: worst error/bound"] = fp8.reindex(out.index).map(lambda v: "-" if pd.isna(v) else f"{v:.2f}")
    return out.reset_index()


def activations(table: pd.DataFrame) -> pd.DataFrame:
    """Per component and statistic: its range over the layers, against the target."""
    g = table.groupby(["component", "statistic"], sort=False)["value"]
    out = pd.DataFrame({"layers": g.count(), "min": g.min(), "median": g.median(), "max": g.max()})
    out["target"] = [TARGETS.get(s, "-") for _, s in out.index]
    return out.map(lambda v: f"{v:.3g}" if isinstance(v, float) else v).reset_index()


def plot_activations(table: pd.DataFrame, path: Path) -> Path:
    stats = [s for s in ("update", "attn_max_prob", "outlier", "gn_mean_spread") if s in set(table["statistic"])]
    fig, axes = plt.subplots(1, len(stats), figsize=(4.5 * len(stats), 3.4), squeeze=False)
    for ax, stat in zip(axes[0], stats, strict=True):
        for comp, g in table[table["statistic"] == stat].groupby("component", sort=False):
            ax.plot(range(len(g)), g["value"], marker=".", lw=1, label=comp)
        ax.set_title(stat, fontsize=9)
        ax.set_xlabel("layer (module order)", fontsize=8)
        ax.set_yscale("log" if stat != "update" else "linear")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def fault_matrix(f: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each injected fault (rows) and, per precision, what came of it; and the counts by outcome."""

    def cell(r: pd.Series) -> str:
        found = "caught" if r["caught"] else "missed" if r["class"] == "must catch" else "not flagged"
        return f"{r['class']}: {found} (effect {r['effect']:.2g}, bound {r['bound']:.2g})"

    table = f.assign(cell=f.apply(cell, axis=1)).pivot_table(
        index=["component", "fault", "position", "expected"], columns="precision", values="cell", aggfunc="first",
        sort=False,
    )  # fmt: skip
    table = table.reindex(columns=[p for p in PRECISION_ORDER if p in table.columns]).fillna("-")
    counts = f.groupby(["class", "caught"]).size().rename("faults").reset_index()
    return table.reset_index(), counts


def detection(rows: pd.DataFrame, faults: pd.DataFrame | None) -> pd.DataFrame:
    """Per mark and precision, the smallest change of that mark's output that fails it (its bound, from the plain
    engine of the precision, for engines that approximate nothing), and the smallest fault of the matrix caught
    there."""

    def named(df: pd.DataFrame, column: str) -> pd.Series:  # every component has an "output" mark
        return df[column].where(df[column] != "output", df["component"] + " output")

    rows = rows.assign(mark=named(rows, "mark"))
    if faults is not None and len(faults):
        faults = faults.assign(expected=named(faults, "expected"))
    exact = rows[rows["approximations"] == "-"].drop_duplicates(["mark", "precision"])  # a precision's bounds
    rank = {c: i for i, c in enumerate(["clip", "uvit", "decoder"])}
    exact = exact.assign(rank=exact["component"].map(rank)).sort_values(["rank", "order"], kind="stable")
    table = exact.pivot_table(index=["rank", "order", "mark"], columns="precision", values="bound", sort=False)
    table = table.reset_index(level=["rank", "order"], drop=True)
    if faults is not None and len(faults):  # the fault matrix's engines give the bounds at the other precisions
        extra = faults[faults["expected"].isin(table.index)].drop_duplicates(["expected", "precision"])
        for _, r in extra[~extra["fault"].str.startswith("fp8_")].iterrows():
            if r["precision"] not in table or pd.isna(table.loc[r["expected"], r["precision"]]):
                table.loc[r["expected"], r["precision"]] = r["bound"]
    order = [p for p in PRECISION_ORDER if p in table.columns]
    table = table.reindex(columns=order).map(lambda v: "-" if pd.isna(v) else sci(v))
    if faults is not None and len(faults):
        caught = faults[faults["caught"].astype(bool)]
        smallest = caught.sort_values("effect").drop_duplicates("expected").set_index("expected")
        table["smallest fault caught"] = [
            f"{smallest.loc[m, 'fault']} ({smallest.loc[m, 'effect']:.2g}, {smallest.loc[m, 'precision']})"
            if m in smallest.index else "-" for m in table.index
        ]  # fmt: skip
    return table


def headroom(rows: pd.DataFrame) -> pd.DataFrame:
    """Marks whose largest value is within HEADROOM of their dtype's largest finite value."""
    near = rows[rows["headroom"] < HEADROOM]
    return near[["engine", "mark", "magnitude", "headroom"]]


def by_layer(rows: pd.DataFrame, component: str, precision: str) -> pd.DataFrame:
    """Marks (execution order) x engines: relative L2 error against the oracle, beside the plain run's and the bound."""
    g = rows[(rows["component"] == component) & (rows["precision"] == precision)]
    if g.empty:
        return g
    table = g.pivot_table(index=["order", "mark"], columns="engine", values="rel_l2", sort=False)
    first = g.drop_duplicates(["order", "mark"]).set_index(["order", "mark"])
    table.insert(0, "plain", first["plain"])
    table.insert(1, "bound", first["bound"])
    return table.sort_index().reset_index(level="order", drop=True).map(sci)


def plot(rows: pd.DataFrame, path: Path) -> Path:
    """One panel per (component, precision) that has engines; the legend under each panel, engines by their build."""
    panels = list(dict.fromkeys(zip(rows["component"], rows["precision"], strict=True)))
    panels.sort(key=lambda cp: PRECISION_ORDER.index(cp[1]) if cp[1] in PRECISION_ORDER else len(PRECISION_ORDER))
    panels.sort(key=lambda cp: list(dict.fromkeys(rows["component"])).index(cp[0]))
    cols = min(3, len(panels))
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6 * cols, 5.2 * nrows), squeeze=False)
    for ax, (comp, prec) in zip(axes.flat, panels, strict=False):
        g = rows[(rows["component"] == comp) & (rows["precision"] == prec)]
        for engine, e in g.groupby("engine", sort=False):
            e = e.sort_values("order")
            ax.semilogy(e["order"], e["rel_l2"].clip(lower=1e-12), marker=".", lw=1, label=engine.split("/", 1)[1])
        ref = g.drop_duplicates("order").sort_values("order")
        ax.semilogy(ref["order"], ref["plain"].clip(lower=1e-12), "k--", lw=1, label=f"plain {prec}")
        ax.semilogy(ref["order"], ref["bound"], "r:", lw=1, label="bound")
        ax.axhline(ref["cap"].iloc[0], color="grey", lw=0.8, label="cap")
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
        ax.set_title(f"{comp} {prec}", fontsize=9)
        ax.set_xlabel("mark (execution order)", fontsize=8)
        ax.set_ylabel("relative L2 error against fp64", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


RULE = (
    "Every engine runs the example inputs of its component, and each mark is compared in fp64 with the oracle: the "
    "reference in fp64, making the approximations the engine declares (reference/approximations.py), recomputed at "
    "each mark from the engine's own values at the marks before it (anchored). A mark's error is then what the "
    "engine adds between two marks, not what it carried in, so rounding does not pile up with depth and the first "
    "failing mark is the layer where the engine goes wrong. A mark passes when that error is at most `bound = "
    "multiplier * plain + floor`, `plain` being what the reference itself adds there, anchored the same way, when "
    "cast to the engine's precision and run eagerly (TorchBench's rule, reference/tolerances.py). A bound over the "
    "cap (0.05) verifies nothing: such a mark is `unverifiable`, and its engine is not reported as passing. The "
    "output is also judged end to end, against the oracle run from the inputs alone, with the plain run's error "
    "there as its `plain`: `end to end` says pass or fail, or `images` where that bound is over the cap (fp8, whose "
    "roundings cascade, and bf16): what the errors add up to is then judged by the image verdict (pd.md). `marks "
    "moved output`: how far the engine built without marks (the one timed) is from the marked one; where that is "
    "over the engine's run-to-run noise and the precision's floor, marking changed the compiled program, and the "
    "unmarked build is judged itself at its output. The tables by mark give the anchored errors.\n"
)


def to_markdown(tables: dict[str, pd.DataFrame], env: dict[str, str], *, images: dict[str, str],
                merged: pd.DataFrame | None = None) -> str:  # fmt: skip
    rows = tables.get("rows", pd.DataFrame())
    parts = [env_header("Layer-wise accuracy against the fp64 oracle", env)]
    if merged is not None and len(merged) > 1:
        parts.append("The header is the oldest run's; this report merges these runs (a later row replaces an earlier "
                     "one of the same engine and mark):\n\n" + merged.to_markdown(index=False) + "\n")  # fmt: skip
    parts.append(outcomes(tables.get("tests")))
    parts.append(RULE)
    if len(rows):
        parts.append("## Summary\n\n" + summary(tables).to_markdown(index=False) + "\n")
    acts = tables.get("activations")
    if acts is not None and len(acts):
        parts.append(
            "## What the weights make the layers do\n\nMeasured on the example inputs, in fp64 (reference/"
            "activations.py), against the targets of the initialisation (reference/init.py).\n\n"
            + activations(acts).to_markdown(index=False)
            + f"\n\n![statistics by layer]({images['activations']})\n"
        )
    faults = tables.get("faults")
    if faults is not None and len(faults):
        matrix, counts = fault_matrix(faults)
        clean = tables.get("clean", pd.DataFrame())
        alarms = int(clean["alarms"].sum()) if len(clean) else 0
        runs_ = int(clean["runs"].sum()) if len(clean) else 0
        parts.append(
            "## Fault matrix\n\nEach fault injected into the engine's own module (engines/faults.py). `must catch`: "
            "the fault moves the expected mark by more than twice its bound (measured by injecting it into the fp64 "
            "oracle), and the first failing mark must be exactly the expected one; `below rounding`: it moves it by "
            "less than the bound, which at that precision rounding alone may reach; `unverifiable`: the bound there "
            "is over the cap; `marginal`: in between. Effect and bound are relative L2 errors.\n\n"
            + counts.to_markdown(index=False)
            + f"\n\nClean builds, the same as the faulty ones', over {clean['seed'].nunique() if len(clean) else 0} "
            f"weight seeds and {runs_} runs: {alarms} alarms.\n\n" + matrix.to_markdown(index=False) + "\n"
        )
    if len(rows):
        parts.append("## The smallest change each mark detects\n\nPer mark, the bound at each precision (the "
                     "plain eager engine's): a change of the mark's output larger than this fails it.\n\n"
                     + detection(rows, faults).to_markdown() + "\n")  # fmt: skip
        near = headroom(rows)
        parts.append(
            f"## Overflow headroom\n\nEach mark's largest value against its dtype's largest finite value (fp16 "
            f"65504): marks within {HEADROOM:g}x are listed. Smallest headroom: {rows['headroom'].min():.3g} at "
            f"{rows.loc[rows['headroom'].idxmin(), 'mark']} ({rows.loc[rows['headroom'].idxmin(), 'engine']}).\n\n"
            + (near.to_markdown(index=False) if len(near) else "None.")
            + "\n"
        )
        parts.append(f"## Error by depth\n\n![relative L2 error by mark]({images['errors']})\n")
        for comp in dict.fromkeys(rows["component"]):
            for prec in [p for p in PRECISION_ORDER if p in set(rows["precision"])]:
                t = by_layer(rows, comp, prec)
                if len(t):
                    parts.append(f"## {comp} {prec}: relative L2 error by mark\n\n" + t.to_markdown() + "\n")
    return "\n".join(parts)


def outcomes(tests: pd.DataFrame | None) -> str:
    """The tests' outcomes, counted, and every one that failed with its reason: a crash (out of memory, say) leaves
    no rows in the tables below, and its absence must not read as a pass."""
    if tests is None or not len(tests):
        return "## Test outcomes\n\nNot recorded by these runs (their results files predate it).\n"
    counts = tests["outcome"].value_counts()
    line = ", ".join(f"{int(counts.get(k, 0))} {k}" for k in ("passed", "failed", "skipped"))
    failed = tests[tests["outcome"] == "failed"].sort_values("test")
    listing = (
        failed[["test", "phase", "reason"]].replace({r"\|": r"\\|"}, regex=True).to_markdown(index=False)
        if len(failed)
        else "None failed."
    )
    return (f"## Test outcomes\n\n{line} (a test made again counts once, with its later outcome).\n\n"
            + listing + "\n")  # fmt: skip


def write_report(results: list[Path], out: Path, *, overwrite: bool = False) -> Path:
    tables, env = load(results)
    out = check_writable(out, overwrite=overwrite)
    images = {}
    if len(tables.get("rows", [])):
        images["errors"] = plot(tables["rows"], check_writable(out.with_suffix(".png"), overwrite=overwrite)).name
    if len(tables.get("activations", [])):
        png = check_writable(out.with_name(out.stem + "-activations.png"), overwrite=overwrite)
        images["activations"] = plot_activations(tables["activations"], png).name
    out.write_text(to_markdown(tables, env, images=images, merged=runs(results)))
    return out
