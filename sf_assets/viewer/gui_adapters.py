"""Two adaptations of spikeinterface-gui 0.14's web mode: no network, and a quick start.

**No network.** spikeinterface-gui 0.14 installs its keyboard shortcuts with a Panel
``ReactComponent``; Panel 1.9 has the browser import React from esm.sh when
the page loads.  With no route to the internet that import fails and Bokeh
renders nothing at all: a blank page.  :func:`use_offline_shortcuts` swaps
in the same component written as a plain ``JSComponent`` (no imports), with
the same parameter and messages, before any view is built.  Every other
resource the page loads (Bokeh, Panel, Tabulator, GridStack) is served by
the viewer itself.

**A quick start.** The GUI colours units with a palette from ``glasbey``,
whose import compiles about sixty numba signatures eagerly and without a
cache: 5-15 s in every process, longer than loading a cached analyzer.
The palette depends only on its arguments, so :func:`use_cached_palette`
computes it once, keeps it as JSON beside the analyzers, and gives the
units the same colours in the same order as the GUI does.
"""
from __future__ import annotations

import json
from pathlib import Path

from sf_assets.core.atomic import write_text_atomic

# spikeinterface-gui's arguments to glasbey.create_palette.
_PALETTE_BOUNDS = {"lightness_bounds": (30, 100), "chroma_bounds": (30, 100)}

_SHORTCUTS_ESM = """
function hashShortcut({ key, altKey, ctrlKey, metaKey, shiftKey }) {
  return `${key}.${+!!altKey}.${+!!ctrlKey}.${+!!metaKey}.${+!!shiftKey}`;
}

export function render({ model }) {
  const keyed = {};
  for (const shortcut of model.shortcuts) {
    if (shortcut.ctrlKey) {
      keyed[hashShortcut({ ...shortcut, ctrlKey: false, metaKey: true })] = shortcut.name;
    }
    keyed[hashShortcut(shortcut)] = shortcut.name;
  }
  function onKeyDown(e) {
    const name = keyed[hashShortcut(e)];
    if (name) {
      e.preventDefault();
      e.stopPropagation();
      model.send_msg(name);
    }
  }
  window.addEventListener("keydown", onKeyDown);
  model.on("remove", () => window.removeEventListener("keydown", onKeyDown));
}
"""


def use_offline_shortcuts() -> None:
    """Replace ``spikeinterface_gui.utils_panel.KeyboardShortcuts`` with an import-free equivalent.

    The views import the class when they build their layout, so replacing
    the module attribute before :func:`spikeinterface_gui.run_mainwindow`
    is enough.
    """
    import param
    from panel.custom import JSComponent

    import spikeinterface_gui.utils_panel as utils_panel

    if getattr(utils_panel.KeyboardShortcuts, "_offline", False):
        return

    class KeyboardShortcuts(JSComponent):
        """Global keyboard shortcuts; a matching key press sends the shortcut's ``name``."""

        _offline = True
        shortcuts = param.List(item_type=dict)
        _esm = _SHORTCUTS_ESM

    utils_panel.KeyboardShortcuts = KeyboardShortcuts


def unit_palette(cache_dir: Path, num_entries: int) -> list[str]:
    """glasbey's palette of ``num_entries`` colours with the GUI's bounds, computed once per cache.

    Parameters
    ----------
    cache_dir : Path
        Where the palette is kept (computing it compiles glasbey's numba code: 10-15 s).
    num_entries : int
        Colours wanted.

    Returns
    -------
    list[str]
        Hex colours.
    """
    path = Path(cache_dir) / f"glasbey-{num_entries}-l30-100-c30-100.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    import glasbey

    palette = [str(c) for c in glasbey.create_palette(num_entries, **_PALETTE_BOUNDS)]
    write_text_atomic(path, json.dumps(palette))
    return palette


def use_cached_palette(cache_dir: Path) -> None:
    """Make the GUI's controller colour units from :func:`unit_palette` (same colours, same order).

    Parameters
    ----------
    cache_dir : Path
        Where the palette is kept.
    """
    import matplotlib.colors as mcolors
    import numpy as np
    from spikeinterface_gui.controller import Controller

    def get_divergent_unit_colors(self, num_entries=20):
        palette = unit_palette(cache_dir, num_entries)
        locations = self.analyzer.get_extension("unit_locations").get_data()
        # As the GUI does: units sorted by position get the palette's colours in turn.
        order = np.lexsort((locations[:, 0], locations[:, 1]))
        return {self.unit_ids[u]: mcolors.to_rgba(palette[i % num_entries]) for i, u in enumerate(order)}

    Controller.get_divergent_unit_colors = get_divergent_unit_colors
