"""Files of ``encred rank``: workbook, Markdown, JSON and a PNG, with the report's overwrite policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import writers as W

HEADER = ["encoder", "stage", "scope", "images", "tokens", "width", "effective rank",
          "effective rank / min(tokens, width)"]


def _rows(res: Any) -> list[list[Any]]:
    return [[r.encoder, r.stage, r.scope, r.images, r.tokens, r.width, r.effective_rank, r.ratio] for r in res.rows]


def markdown(res: Any, fig: str | None) -> str:
    out = [f"# Effective rank of {res.base}'s encoder features", "",
           f"Datasets: {', '.join(res.datasets)}" + (f" (first {res.limit} samples each)" if res.limit else "")
           + f". Encoders: {', '.join(res.encoders)}.", "",
           "Effective rank (Roy & Vetterli 2007) = exp of the entropy of the normalised singular values of the "
           "token-by-channel feature matrix at the fusion point (not centred); `fusion` is the tensor masking "
           "replaces, `projected` the encoder's share of the projector output where the family defines one. "
           "Each distinct image is encoded once.", "",
           W.md_table(HEADER, _rows(res)), ""]
    out += [f"Note: {n}" for n in res.notes]
    if fig:
        out += ["", f"![{fig}]({fig})", ""]
    return "\n".join(out)


def figure(path: Path, res: Any) -> None:
    import numpy as np

    plt = W._plt()
    stages = [s for s in ("fusion", "projected") if any(r.stage == s for r in res.rows)]
    scopes = list(dict.fromkeys(r.scope for r in res.rows))
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 + 2.2 * len(stages) * len(res.encoders) / 3, 3.8),
                             squeeze=False)
    width = 0.8 / max(1, len(scopes))
    for ax, stage in zip(axes[0], stages):
        val = {(r.encoder, r.scope): r for r in res.rows if r.stage == stage}
        for j, sc in enumerate(scopes):
            xs = np.arange(len(res.encoders)) + (j - (len(scopes) - 1) / 2) * width
            ys = [val[(e, sc)].effective_rank if (e, sc) in val else np.nan for e in res.encoders]
            label = "all datasets" if sc.startswith("all: ") else sc
            ax.bar(xs, ys, width, label=label, hatch="//" if sc.startswith("all: ") else None,
                   edgecolor="black", lw=0.4)
        widths = {r.encoder: r.width for r in res.rows if r.stage == stage}
        ax.set_xticks(range(len(res.encoders)), [f"{e}\n(width {widths.get(e, '?')})" for e in res.encoders])
        ax.set_ylabel("effective rank")
        ax.set_title(f"{stage} features", fontsize=9)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{res.base}: effective rank of encoder features", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def write(res: Any, out: Path, *, figures: bool = True, force: bool = False) -> dict[str, Path]:
    """Write ``<base>_rank.{xlsx,md,json}`` (+ ``_rank.png``) into ``out``; returns kind -> path."""
    stem = f"{res.base}_rank"
    names = {"xlsx": f"{stem}.xlsx", "markdown": f"{stem}.md", "json": f"{stem}.json"}
    if figures:
        names["figure"] = f"{stem}.png"
    st = W.SafeWriter(out, stem, force=force)
    st.check(list(names.values()))
    try:
        st.write(names["xlsx"], lambda p: W.write_xlsx(p, [("Effective rank", HEADER, _rows(res))]))
        st.write(names["markdown"], lambda p: W.write_text(p, markdown(res, names.get("figure"))))
        if figures:
            st.write(names["figure"], lambda p: figure(p, res))
        st.write(names["json"], lambda p: W.write_json(p, {
            "base": res.base, "datasets": res.datasets, "encoders": res.encoders, "limit": res.limit,
            "rows": [r.as_dict() for r in res.rows], "notes": res.notes, "seconds": res.seconds}))
        st.commit()
    except BaseException:
        st.abort()
        raise
    files = {k: out / v for k, v in names.items()}
    files["manifest"] = out / W.MANIFEST
    return files
