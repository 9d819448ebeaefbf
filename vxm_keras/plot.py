"""Slice figures of volumes, label boundaries and overlays (matplotlib, no display needed)."""

import numpy as np

__all__ = ['mid_slices', 'label_boundaries', 'slices_figure', 'dice_and_folding_figure', 'save_figure_atomic',
           'METHOD_STYLES', 'dice_boxplot', 'frontier_figure', 'template_grid']


def _backend():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _display(img, axis):
    """Orient a slice of an LIA volume for display: sagittal (axis 0) superior up and
    anterior right, axial (axis 1) anterior up, coronal (axis 2) superior up."""
    if axis == 0:
        return img
    if axis == 1:
        return img.T[::-1]
    return img.T


def mid_slices(vol, index=None):
    """Three orthogonal slices through ``index`` (default the centre) of a ``(*spatial)`` 3-D
    array in the LIA layout of prepared data (sagittal, axial, coronal), oriented for display."""
    vol = np.asarray(vol)
    index = [n // 2 for n in vol.shape] if index is None else index
    return [_display(np.take(vol, index[ax], axis=ax), ax) for ax in range(3)]


def label_boundaries(seg):
    """Boolean map of voxels whose 4-neighbourhood (2-D) holds another label."""
    seg = np.asarray(seg)
    edge = np.zeros(seg.shape, bool)
    for ax in range(seg.ndim):
        diff = np.diff(seg, axis=ax) != 0
        lo = [slice(None)] * seg.ndim
        hi = [slice(None)] * seg.ndim
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        edge[tuple(lo)] |= diff
        edge[tuple(hi)] |= diff
    return edge & (seg > 0)


def _show(ax, img, title=None, boundary=None):
    ax.imshow(img, cmap='gray', vmin=0, vmax=1,
              interpolation='nearest', origin='upper')
    if boundary is not None:
        overlay = np.zeros(boundary.shape + (4,))
        overlay[boundary] = (1.0, 0.2, 0.2, 0.9)
        ax.imshow(overlay, interpolation='nearest', origin='upper')
    if title:
        ax.set_title(title, fontsize=9)
    ax.axis('off')


def slices_figure(path, volumes, titles, segs=None, index=None, heat=None):
    """Write a PNG grid: one column per volume, rows = the three orthogonal mid-slices.

    Args:
        path: output PNG.
        volumes: list of ``(*spatial)`` 3-D arrays with intensities in [0, 1].
        titles: column titles.
        segs: optional list (same length, entries may be ``None``) of label
            maps whose boundaries are drawn in red.
        index: voxel the slices pass through (default the centre).
        heat: optional ``(map, title)``: one more column, a non-negative
            ``(*spatial)`` map (e.g. uncertainty) in colour with a scale bar.
    """
    plt = _backend()
    segs = segs or [None] * len(volumes)
    ncols = len(volumes) + (heat is not None)
    fig, axes = plt.subplots(3, ncols, figsize=(2.6 * ncols + (0.6 if heat is not None else 0), 7.5),
                             squeeze=False)
    for col, (vol, title, seg) in enumerate(zip(volumes, titles, segs)):
        sl = mid_slices(vol, index)
        bd = [label_boundaries(b) for b in mid_slices(seg, index)] if seg is not None else [None] * 3
        for row in range(3):
            _show(axes[row, col], sl[row], title if row == 0 else None, bd[row])
    if heat is not None:
        values, title = heat
        top = float(np.percentile(values, 99.5)) or 1.0
        for row, sl in enumerate(mid_slices(values, index)):
            ax = axes[row, -1]
            im = ax.imshow(sl, cmap='magma', vmin=0, vmax=top, interpolation='nearest', origin='upper')
            ax.axis('off')
            if row == 0:
                ax.set_title(title, fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def dice_and_folding_figure(path, x, dice, folding, xlabel, title, xticklabels=None):
    """Dice (left axis, circles) and folding in % (right axis, squares) against ``x``: the
    figure of a sweep (lambda, training steps). ``xticklabels`` replaces the ticks at ``x``."""
    plt = _backend()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(x, dice, 'o-', color='C0')
    if xticklabels is not None:
        ax.set_xticks(x, xticklabels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('Dice, validation pairs (network alone)', color='C0')
    ax2 = ax.twinx()
    ax2.plot(x, folding, 's--', color='C3')
    ax2.set_ylabel('folding (% voxels, det J <= 0)', color='C3')
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_figure_atomic(path, draw, *args, overwrite=True, **kwargs):
    """Call ``draw(tmp_path, *args, **kwargs)`` on a temporary file beside ``path``, then
    rename it to ``path``: an interrupted plot never leaves a partial PNG."""
    from .io import atomic_path
    with atomic_path(path, overwrite=overwrite) as tmp:
        draw(tmp, *args, **kwargs)


METHOD_STYLES = {'affine': ('affine only', '#bbbbbb'), 'model': ('model', '#4c72b0'),
                 'ants': ('ANTs SyN', '#dd8452')}


def dice_boxplot(path, rows, labels, names=None):
    """Box plot of Dice per structure, one box per method side by side (the CVPR paper's figure).

    Left/right structures are pooled under one name, as in the paper.
    ``rows`` are dicts with ``method`` (``'affine'``, ``'model'``, ``'ants'``), ``label`` and ``dice``.
    """
    plt = _backend()
    names = names or {}
    methods = [m for m in METHOD_STYLES if any(r['method'] == m for r in rows)]
    groups = {}
    for lab in labels:
        name = names.get(lab, str(lab)).replace('L ', '').replace('R ', '')
        groups.setdefault(name, []).append(lab)
    width = 0.8 * len(methods) + 0.6
    fig, ax = plt.subplots(figsize=(max(8, 0.35 * width * len(groups)), 4.5))
    pos, ticks, ticklabels = 0, [], []
    for name, labs in groups.items():
        data = [[r['dice'] for r in rows if r['method'] == m and r['label'] in labs and np.isfinite(r['dice'])]
                for m in methods]
        if not any(data[1:] if len(data) > 1 else data):
            continue
        box = ax.boxplot(data, positions=[pos + 0.8 * k for k in range(len(methods))], widths=0.7,
                         patch_artist=True, showfliers=True)
        for patch, method in zip(box['boxes'], methods):
            patch.set_facecolor(METHOD_STYLES[method][1])
        ticks.append(pos + 0.4 * (len(methods) - 1))
        ticklabels.append(name)
        pos += width
    ax.set_xticks(ticks)
    ax.set_xticklabels(ticklabels, rotation=60, ha='right', fontsize=8)
    ax.set_ylabel('Dice')
    ax.set_ylim(0, 1)
    ax.legend([plt.Rectangle((0, 0), 1, 1, fc=METHOD_STYLES[m][1]) for m in methods],
              [METHOD_STYLES[m][0] for m in methods], loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def frontier_figure(path, points, affine, titles):
    """Dice against seconds a pair (log scale), one panel per evaluation set.

    ``points``: ``(name, seconds, {set: dice}, is_peer)`` per method (peers drawn as red
    squares); ``affine``: ``{set: dice}`` of the affine baseline, a dotted line; ``titles``:
    ``{set: panel title}`` in panel order."""
    plt = _backend()
    sets = list(titles)
    fig, axes = plt.subplots(1, len(sets), figsize=(4.4 * len(sets), 4), squeeze=False)
    for ax, s in zip(axes[0], sets):
        for name, seconds, dice, is_peer in points:
            ax.plot(seconds, dice[s], 's' if is_peer else 'o', color='C3' if is_peer else 'C0')
            ax.annotate(name, (seconds, dice[s]), fontsize=7, xytext=(3, 3), textcoords='offset points')
        ax.axhline(affine[s], color='gray', lw=0.8, ls=':')
        ax.set_xscale('log')
        ax.set_xlabel('seconds a pair')
        ax.set_title(titles[s], fontsize=10)
    axes[0][0].set_ylabel('Dice (dotted: affine only)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def template_grid(path, templates, rows, cols):
    """Templates ``(n, *spatial)`` in a grid of ``len(rows)`` x ``len(cols)`` panels (3-D ones by
    their coronal middle slice), row and column titles from ``rows``, ``cols``; a PNG written
    atomically."""
    from .io import atomic_path
    plt = _backend()
    n_rows, n_cols = len(rows), len(cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.4 * n_cols + 1, 1.4 * n_rows), squeeze=False)
    for k, t in enumerate(templates[:n_rows * n_cols]):
        ax = axes[k // n_cols, k % n_cols]
        img = t if t.ndim == 2 else mid_slices(t)[2]
        ax.imshow(np.clip(img, 0, 1), cmap='gray', vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if k // n_cols == 0:
            ax.set_title(cols[k % n_cols], fontsize=8)
        if k % n_cols == 0:
            ax.set_ylabel(rows[k // n_cols], fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format='png')
    plt.close(fig)
