"""Matplotlib figures of comparison results, as PNG bytes (Agg backend: no display)."""
from __future__ import annotations

import io


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_vs_snr_png(units_by_sorter: dict[str, list[dict]], title: str = "Accuracy vs SNR per sorter") -> bytes:
    """One scatter of true-unit accuracy against SNR, a colour per sorter.

    Parameters
    ----------
    units_by_sorter : dict
        ``{sorter: [per-true-unit dicts with "snr" and "accuracy"]}``; units
        without an SNR (None) are left out.
    title : str
        The axes' title.

    Returns
    -------
    bytes
        A PNG image.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for sorter_name, units in sorted(units_by_sorter.items()):
        points = [(u["snr"], u["accuracy"]) for u in units if u.get("snr") is not None]
        ax.scatter([p[0] for p in points], [p[1] for p in points], label=sorter_name, s=14, alpha=0.7)
    ax.set_xlabel("ground-truth unit SNR")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    if units_by_sorter:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
