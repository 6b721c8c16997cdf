"""``m3vit run --routing-map``: the input image with each patch coloured by its expert, per task.

matplotlib (Agg, no display) is imported only here and only when a map is drawn, so that the
runtime and the rest of the command keep to numpy.
"""

import importlib.util
from pathlib import Path

import numpy as np

from cli import UserError

__all__ = ["check_map_path", "check_layer", "draw_routing_map"]

#: More experts than this get a continuous colour map instead of distinct colours.
_DISTINCT = 20


def check_map_path(path):
    """Fail now, before any frame runs, if the map cannot be written or drawn."""
    from cli.model import check_new_file

    check_new_file("--routing-map", path, ".png", any_case=True)
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("--routing-map needs matplotlib (pip install matplotlib); it is not installed")


def check_layer(bundle, layer):
    """The MoE layer to draw: ``layer``, or the first MoE layer when ``None``; a bad one is a UserError."""
    routing = bundle.routing
    if routing is None:
        raise UserError(f"bundle {bundle.path} predates the accelerator's routing output; make it again with "
                        f"m3vit bundle to draw a routing map")
    layers = routing["moe_layers"]
    if not layers:
        raise UserError(f"config {bundle.name!r} has no MoE layer: there is no routing to draw")
    if layer is None:
        return layers[0]
    if layer not in layers:
        raise UserError(f"--routing-layer {layer} is not a MoE layer of config {bundle.name!r}; its MoE layers "
                        f"are {', '.join(map(str, layers))}")
    return layer


def _colours(num_experts):
    import matplotlib
    from matplotlib.colors import ListedColormap

    if num_experts <= 10:
        base = matplotlib.colormaps["tab10"]
        return ListedColormap([base(i) for i in range(num_experts)], name="experts")
    if num_experts <= _DISTINCT:
        # tab20's strong colours first, then their light partners.
        base = matplotlib.colormaps["tab20"]
        order = list(range(0, 20, 2)) + list(range(1, 20, 2))
        return ListedColormap([base(i) for i in order[:num_experts]], name="experts")
    return ListedColormap(matplotlib.colormaps["turbo"](np.linspace(0, 1, num_experts)), name="experts")


def _gray(pixels):
    """int8 pixels ``[C, H, W]`` as a grey ``[H, W]`` image in [0, 1]: under the expert colours,
    the image's own colours would read as experts."""
    x = (np.asarray(pixels, dtype=np.float64) + 128.0) / 255.0
    if x.shape[0] >= 3:
        return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    return x[0]


def draw_routing_map(path, pixels, results, bundle, layer):
    """Write the routing map of ``results`` (``runtime.driver.Features``, one per task) to ``path``.

    Top row, one panel per task: the image with each patch tinted by its first-choice expert at
    MoE layer ``layer`` (the number in a patch is that expert); bottom row, per task: tokens per
    expert (every one of a token's ``top_k`` choices counts) in each MoE layer, as a heat map.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routing = bundle.routing
    layers, experts, patch = list(routing["moe_layers"]), routing["num_experts"], routing["patch"]
    row = layers.index(layer)
    c, h, w = pixels.shape
    grid = (h // patch, w // patch)
    cmap = _colours(experts)
    image = _gray(pixels)
    counts = [np.stack([np.bincount(f.routing[i].ravel(), minlength=experts) for i in range(len(layers))])
              for f in results]
    top = max(int(max(cnt.max() for cnt in counts)), 1)

    n = len(results)
    panel_w = max(3.5, min(8.0, 3.0 * w / h))
    fig, axes = plt.subplots(2, n, figsize=(panel_w * n + 1.5, panel_w * h / w + 0.45 * len(layers) + 2.2),
                             squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": [panel_w * h / w, 0.45 * len(layers) + 0.8]})
    for ax, f in zip(axes[0], results):
        first = f.routing[row, 1:, 0].reshape(grid)       # token 0 is the class token, not a patch
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest", extent=(0, w, h, 0))
        shown = ax.imshow(first, cmap=cmap, vmin=-0.5, vmax=experts - 0.5, alpha=0.55, interpolation="nearest",
                          extent=(0, w, h, 0))
        if grid[0] * grid[1] <= 512:
            for (y, x), e in np.ndenumerate(first):
                ax.text((x + 0.5) * patch, (y + 0.5) * patch, str(e), ha="center", va="center",
                        fontsize=7, color="white")
        ax.set_xticks(np.arange(0, w + 1, patch), labels=[])
        ax.set_yticks(np.arange(0, h + 1, patch), labels=[])
        ax.tick_params(length=0)
        ax.grid(color="white", linewidth=0.3, alpha=0.6)
        ax.set_title(f"task {f.task}: layer {layer}, first-choice expert per patch\n"
                     f"(class token: expert {f.routing[row, 0, 0]}; {f.cycles} cycles)", fontsize=9)
    bar = fig.colorbar(shown, ax=list(axes[0]), ticks=range(experts) if experts <= 32 else None,
                       fraction=0.03, pad=0.01)
    bar.set_label("expert")
    for ax, f, cnt in zip(axes[1], results, counts):
        heat = ax.imshow(cnt, cmap="viridis", vmin=0, vmax=top, aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(layers)), labels=[f"layer {v}" for v in layers])
        ax.set_xticks(range(experts) if experts <= 32 else np.linspace(0, experts - 1, 9).astype(int))
        ax.set_xlabel("expert")
        ax.set_title(f"task {f.task}: tokens per expert (all top-{routing['top_k']} choices)", fontsize=9)
        if experts <= 32:
            for (y, x), v in np.ndenumerate(cnt):
                ax.text(x, y, str(v), ha="center", va="center", fontsize=6,
                        color="black" if v > top / 2 else "white")
    fig.colorbar(heat, ax=list(axes[1]), fraction=0.03, pad=0.01).set_label("tokens")
    out = Path(path)
    # Write beside and rename, so that an interrupted write leaves no half file under the name.
    partial = out.with_name(out.name + ".partial")
    try:
        fig.savefig(partial, format="png", dpi=120)
        partial.replace(out)
    except OSError as err:
        partial.unlink(missing_ok=True)
        raise UserError(f"cannot write {out}: {err.strerror}") from None
    finally:
        plt.close(fig)
