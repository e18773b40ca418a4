"""The picture: user vectors on a 2-D t-SNE map, by hidden segment and by lifecycle, with the
path of a few users through their vector history."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def user_map(
    vectors: np.ndarray,
    segments: np.ndarray,
    lifecycles: list[str],
    paths: list[np.ndarray],
    out: Path,
    title: str,
) -> None:
    """Args:
    vectors: (N, D) current vectors; segments (N,) ints; lifecycles N names.
    paths: per highlighted user, (h, D) vectors oldest first (drawn as arrows).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    stacked = np.vstack([vectors, *paths]) if paths else vectors
    xy = TSNE(n_components=2, perplexity=30, init="pca", random_state=0).fit_transform(stacked)
    pts, rest = xy[: len(vectors)], xy[len(vectors) :]
    fig, axes = plt.subplots(1, 2, figsize=(16, 7.5), dpi=110)
    ax = axes[0]
    sc = ax.scatter(pts[:, 0], pts[:, 1], c=segments, cmap="tab10", s=9, alpha=0.8)
    ax.legend(*sc.legend_elements(), title="hidden segment", loc="best", fontsize=8)
    ax.set_title("users by hidden segment (never shown to the model)")
    ax = axes[1]
    states = ["new", "engaged", "fading", "churned"]
    colors = {"new": "#1f77b4", "engaged": "#2ca02c", "fading": "#ff7f0e", "churned": "#d62728"}
    for s in states:
        m = np.array([lc == s for lc in lifecycles])
        if m.any():
            ax.scatter(pts[m, 0], pts[m, 1], c=colors[s], s=9, alpha=0.7, label=s)
    i = 0
    for n, p in enumerate(paths):
        seg = rest[i : i + len(p)]
        i += len(p)
        ax.plot(seg[:, 0], seg[:, 1], "-", color="black", lw=1.2, alpha=0.8)
        ax.annotate(
            "",
            xy=seg[-1],
            xytext=seg[-2] if len(seg) > 1 else seg[-1],
            arrowprops={"arrowstyle": "->", "color": "black", "lw": 1.5},
        )
        ax.scatter(seg[0, 0], seg[0, 1], marker="o", facecolor="white", edgecolor="black", s=30)
        ax.text(seg[-1, 0], seg[-1, 1], f" user {n + 1}", fontsize=8)
    ax.legend(title="lifecycle at the end", loc="best", fontsize=8)
    ax.set_title("users by lifecycle; black: a few users' vector history (o = oldest)")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
