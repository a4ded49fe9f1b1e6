"""A 2-D map of the feature space: t-SNE (scikit-learn) or UMAP (umap-learn, when installed),
drawn with matplotlib: colour = identity (or pseudo-identity), marker = camera.

pick_labels chooses which identities to show, embed_2d places the features, plot_embedding
draws them and writes the coordinates as a CSV beside the PNG (tools/embed_plot.py).
"""
import csv

import numpy as np

from .errors import ReIDError

METHODS = ('auto', 'tsne', 'umap')
MARKERS = ('o', 's', '^', 'D', 'v', 'P', 'X', '*', '<', '>', 'h', 'p')


def pick_labels(labels, count, seed=0):
    """Rows of `count` labels drawn at random (seeded) among those >= 0 (all when fewer), in
    row order; -1 (junk, distractors, outliers of clustering) is never drawn."""
    labels = np.asarray(labels)
    present = np.unique(labels[labels >= 0])
    if len(present) == 0:
        raise ReIDError('no image has an identity (every label is -1)')
    if count < len(present):
        present = np.sort(np.random.default_rng(seed).choice(present, count, replace=False))
    return np.flatnonzero(np.isin(labels, present))


def umap_available():
    try:
        import umap  # noqa: F401
    except ImportError:
        return False
    return True


def embed_2d(features, method='auto', seed=0):
    """(N x 2 coordinates, the method used) of L2-normalised features: 'tsne', 'umap', or
    'auto' (UMAP when umap-learn is installed, else t-SNE). Deterministic for a seed."""
    if method not in METHODS:
        raise ReIDError(f'the embedding method must be one of {", ".join(METHODS)}, not {method!r}')
    feats = np.asarray(features, dtype=np.float64)
    if len(feats) < 3:
        raise ReIDError(f'a 2-D map needs at least 3 images, got {len(feats)}')
    feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    if method == 'auto':
        method = 'umap' if umap_available() else 'tsne'
    if method == 'umap':
        if not umap_available():
            raise ReIDError('the UMAP embedding needs umap-learn (pip install umap-learn); '
                            'or use the t-SNE one (--method tsne)')
        import umap
        coords = umap.UMAP(n_components=2, random_state=seed,
                           n_neighbors=min(15, len(feats) - 1)).fit_transform(feats)
        return np.asarray(coords, dtype=np.float64), method
    from sklearn.manifold import TSNE
    tsne = TSNE(n_components=2, perplexity=min(30.0, (len(feats) - 1) / 3), init='pca',
                random_state=seed)
    return tsne.fit_transform(feats).astype(np.float64), method


def plot_embedding(coords, labels, camids, paths, path, title='', legend='identity'):
    """Scatter the 2-D coordinates: colour by `labels`, marker by `camids` (None: one marker).
    Writes path (PNG) and its CSV beside it (path, label, camid, x, y; one row per point)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from .plots import _save, _write_csv, beside
    labels = np.asarray(labels)
    cams = np.zeros(len(labels), dtype=np.int64) if camids is None else np.asarray(camids)
    fig = Figure(figsize=(7.5, 6), layout='constrained')
    ax = fig.add_subplot()
    colours = colormaps['tab20'] if len(np.unique(labels)) > 10 else colormaps['tab10']
    for i, label in enumerate(np.unique(labels)):
        for cam in np.unique(cams):
            rows = (labels == label) & (cams == cam)
            if rows.any():
                ax.scatter(coords[rows, 0], coords[rows, 1], s=28, alpha=0.85,
                           color=colours(i % colours.N), marker=MARKERS[int(cam) % len(MARKERS)],
                           edgecolors='black', linewidths=0.3)
    handles = [ax.scatter([], [], color=colours(i % colours.N), marker='o', label=str(v))
               for i, v in enumerate(np.unique(labels)[:20])]
    fig.legend(handles=handles, fontsize=7, loc='outside right upper', title=legend)
    if camids is not None:
        marks = [ax.scatter([], [], color='grey', marker=MARKERS[int(c) % len(MARKERS)],
                            label=f'cam {int(c)}') for c in np.unique(cams)]
        fig.legend(handles=marks, fontsize=7, loc='outside right lower', title='camera')
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    _write_csv(beside(path), ['path', legend, 'camid', 'x', 'y'],
               [[p, int(lab), '' if camids is None else int(c), repr(float(x)), repr(float(y))]
                for p, lab, c, (x, y) in zip(paths, labels, cams, coords)])
    return _save(fig, path)


def read_embedding_csv(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))

