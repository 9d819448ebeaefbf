"""Template utilities: label maps for learned templates.

Arrays are numpy: images ``(n, *spatial)``, label maps ``(n, *spatial)`` int.
"""

import numpy as np


def majority_vote(segs):
    """Per-voxel most frequent label of ``(n, *spatial)`` label maps (ties: the smaller label)."""
    segs = np.asarray(segs)
    labels = np.unique(segs)
    counts = np.stack([(segs == lab).sum(0) for lab in labels])
    return labels[np.argmax(counts, axis=0)].astype(np.int32)


def template_segmentation(model, images, segs, attributes=None, batch_size=1):
    """Segmentation of a learned template: every subject's labels warped into template space
    (nearest neighbour, through the inverse of its registration), then a per-voxel majority.

    Args:
        model: a trained :class:`~vxm_keras.networks.TemplateCreation`.
        images: ``(n, *spatial)`` images the labels belong to.
        segs: ``(n, *spatial)`` integer label maps.
        attributes: ``(n, n_attributes)`` for a conditional model.

    Returns:
        ``(*spatial)`` int32 label map.
    """
    from .networks import nn_transformer
    net = model.warp_model(inverse=True)
    nn = nn_transformer(images.shape[1:])
    warped = []
    for start in range(0, len(images), batch_size):
        x = np.asarray(images[start:start + batch_size], np.float32)[..., None]
        inputs = [x, np.asarray(attributes[start:start + batch_size], np.float32)] if attributes is not None else x
        inverse = net.predict_on_batch(inputs)[2]
        seg = np.asarray(segs[start:start + batch_size], np.float32)[..., None]
        warped.append(np.rint(np.asarray(nn.predict_on_batch([seg, inverse]))[..., 0]).astype(np.int32))
    return majority_vote(np.concatenate(warped))
