"""Accuracy results (results/accuracy-*.json from `pytest reference`) -> reports/accuracy.md and accuracy.png."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from reports.common import check_writable, env_header, sci  # noqa: E402

PRECISION_ORDER = ["fp32", "bf16", "fp16"]


def load_rows(paths: list[Path]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Merge result files (split runs, xdist workers); the environment header comes from the first."""
    if not paths:
        raise ValueError("no accuracy result files given")
    data = [json.loads(Path(p).read_text()) for p in paths]
    df = pd.DataFrame([row for d in data for row in d["rows"]])
    df = df.drop_duplicates(["engine", "mark"], keep="last")
    df["ratio"] = df["rel_l2"] / df["bound"]  # > 1 fails
    return df, data[0]["env"]


def runs(paths: list[Path]) -> pd.DataFrame:
    """Where each merged file came from: its date, commit and GPU, and how many engines it holds."""
    rows = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        env = data["env"]
        engines = len({r["engine"] for r in data["rows"]})
        rows.append(
            {"file": Path(p).name, **{k: env.get(k, "-") for k in ("date", "commit", "gpu")}, "engines": engines}
        )
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per engine: verdict, first failing mark, the output's error and the worst mark."""
    rows = []
    for engine, g in df.groupby("engine", sort=False):
        g = g.sort_values("order")
        failing = g[~g["passed"]]
        out = g[g["mark"] == "output"].iloc[0]
        worst = g.loc[g["ratio"].idxmax()] if g["ratio"].notna().any() else out
        rows.append({
            "engine": engine, "component": out["component"], "precision": out["precision"],
            "status": "pass" if failing.empty else "FAIL",
            "first failing mark": failing.iloc[0]["mark"] if not failing.empty else "-",
            "output rel L2": sci(out["rel_l2"]), "output SQNR dB": f"{out['sqnr_db']:.1f}",
            "output cosine": f"{out['cosine']:.6f}", "worst mark": worst["mark"],
            "worst rel L2 / bound": f"{worst['ratio']:.2f}", "NaN/Inf": int(g["nonfinite"].sum()),
        })  # fmt: skip
    return pd.DataFrame(rows)


def by_layer(df: pd.DataFrame, component: str, precision: str) -> pd.DataFrame:
    """Marks (execution order) x engines: relative L2 error, with the fp32-vs-fp64 floor and the fp32 engines' bound."""
    g = df[(df["component"] == component) & (df["precision"] == precision)]
    if g.empty:
        return g
    table = g.pivot_table(index=["order", "mark"], columns="engine", values="rel_l2", sort=False)
    first = g.drop_duplicates(["order", "mark"]).set_index(["order", "mark"])
    table.insert(0, "fp32 floor", first["floor"])
    table.insert(1, "bound", first["bound"])
    return table.sort_index().reset_index(level="order", drop=True).map(sci)


def plot(df: pd.DataFrame, path: Path) -> Path:
    comps = list(dict.fromkeys(df["component"]))
    precs = [p for p in PRECISION_ORDER if p in set(df["precision"])]
    fig, axes = plt.subplots(len(comps), len(precs), figsize=(5.5 * len(precs), 3.6 * len(comps)), squeeze=False)
    for i, comp in enumerate(comps):
        for j, prec in enumerate(precs):
            ax = axes[i][j]
            g = df[(df["component"] == comp) & (df["precision"] == prec)]
            for engine, e in g.groupby("engine", sort=False):
                e = e.sort_values("order")
                ax.semilogy(e["order"], e["rel_l2"].clip(lower=1e-12), marker=".", lw=1, label=engine.split("/", 1)[1])
            if not g.empty:
                ref = g.drop_duplicates("order").sort_values("order")
                ax.semilogy(ref["order"], ref["floor"].clip(lower=1e-12), "k--", lw=1, label="fp32 vs fp64 floor")
                ax.semilogy(ref["order"], ref["bound"], "r:", lw=1, label="bound")
                ax.legend(fontsize=6)
            ax.set_title(f"{comp} {prec}", fontsize=9)
            ax.set_xlabel("mark (execution order)", fontsize=8)
            ax.set_ylabel("relative L2 error", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def to_markdown(df: pd.DataFrame, env: dict[str, str], *, image: str, merged: pd.DataFrame | None = None) -> str:
    parts = [env_header("Layer-wise accuracy against the strict-fp32 reference", env)]
    if merged is not None and len(merged) > 1:
        parts.append(
            "The header is the first run's; this report merges these runs (a later run's row replaces an earlier "
            "one of the same engine and mark):\n\n" + merged.to_markdown(index=False) + "\n"
        )
    parts.append(
        "Every engine runs the same inputs as the fp32 PyTorch reference (TF32 off); each mark is compared in fp64. "
        "A mark passes when its relative L2 error is at most `bound = max(4u, k * floor)`, where `floor` is the fp32 "
        "reference's own error against an fp64 run at that mark (reference/tolerances.py). The first failing mark "
        "is where an engine departs from the reference.\n"
    )
    parts.append("## Summary\n\n" + summary(df).to_markdown(index=False) + "\n")
    parts.append(f"## Error by depth\n\n![relative L2 error by mark]({image})\n")
    dec = df[(df["component"] == "decoder") & (df["precision"] == "fp16")]
    if dec["options"].str.contains("groupnorm").any():
        gn = by_layer(dec, "decoder", "fp16")
        parts.append("## fp16 decoder with and without the Triton GroupNorm\n\n" + gn.to_markdown() + "\n")
    for comp in dict.fromkeys(df["component"]):
        for prec in [p for p in PRECISION_ORDER if p in set(df["precision"])]:
            t = by_layer(df, comp, prec)
            if len(t):
                parts.append(f"## {comp} {prec}: relative L2 error by mark\n\n" + t.to_markdown() + "\n")
    return "\n".join(parts)


def write_report(results: list[Path], out: Path, *, overwrite: bool = False) -> Path:
    df, env = load_rows(results)
    out = check_writable(out, overwrite=overwrite)
    png = check_writable(out.with_suffix(".png"), overwrite=overwrite)
    plot(df, png)
    out.write_text(to_markdown(df, env, image=png.name, merged=runs(results)))
    return out
