"""Template utilities: label maps for learned templates.

Arrays are numpy: images ``(n, *spatial)``, label maps ``(n, *spatial)`` int.
"""

import numpy as np

__all__ = ['majority_vote', 'template_segmentation', 'downsize_images', 'downsize_labels', 'template_to_subjects']


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
    nn = nn_transformer(images.shape[1:])
    warped = [_warp_labels(nn, segs[start:stop], to_template)
              for start, stop, to_template in _registrations(model, images, attributes, batch_size, inverse=True)]
    return majority_vote(np.concatenate(warped))


def _registrations(model, images, attributes, batch_size, inverse):
    """Register the template to ``images`` in batches; yield ``(start, stop, field)`` with the
    template-to-image displacement, or with ``inverse=True`` the image-to-template one."""
    net = model.warp_model(inverse=inverse)
    for start in range(0, len(images), batch_size):
        stop = start + batch_size
        x = np.asarray(images[start:stop], np.float32)[..., None]
        inputs = [x, np.asarray(attributes[start:stop], np.float32)] if attributes is not None else x
        yield start, stop, np.asarray(net.predict_on_batch(inputs)[2 if inverse else 1])


def _warp_labels(nn, segs, field):
    """``(batch, *spatial)`` label maps warped by ``field`` with the nearest-neighbour model ``nn``."""
    moved = nn.predict_on_batch([np.asarray(segs, np.float32)[..., None], field])
    return np.rint(np.asarray(moved)[..., 0]).astype(np.int32)


def downsize_images(images, factor):
    """Block-average ``(n, *spatial)`` images by an integer ``factor`` per axis (the
    resolution ``train_template.py --downsize`` trains at). ``factor`` must divide every axis."""
    images = np.asarray(images)
    if factor == 1:
        return images
    n, *shape = images.shape
    if any(s % factor for s in shape):
        raise ValueError(f'downsize factor {factor} does not divide the shape {tuple(shape)}')
    blocks = images.reshape(n, *[v for s in shape for v in (s // factor, factor)])
    return blocks.mean(axis=tuple(range(2, 2 + 2 * len(shape), 2)))


def downsize_labels(segs, factor):
    """Subsample ``(n, *spatial)`` label maps to the grid of :func:`downsize_images`: the voxel
    nearest each block's centre (labels cannot be averaged)."""
    segs = np.asarray(segs)
    return segs[(slice(None),) + tuple(slice(factor // 2, None, factor) for _ in segs.shape[1:])]


def template_to_subjects(model, template_seg, images, attributes=None, batch_size=1):
    """Atlas-based segmentation with a learned template: the template's labels warped onto
    each image by the template-to-image registration (nearest neighbour).

    Args:
        model: a trained :class:`~vxm_keras.networks.TemplateCreation`.
        template_seg: ``(*spatial)`` int label map of the template.
        images: ``(n, *spatial)`` images on the model's grid.
        attributes: ``(n, n_attributes)`` for a conditional model.

    Returns:
        ``(segs, warps)``: ``(n, *spatial)`` int32 labels in each image's space and the
        displacements ``(n, *spatial, ndim)`` (voxel units, ``ij``) that produced them.
    """
    from .networks import nn_transformer
    nn = nn_transformer(images.shape[1:])
    template_seg = np.asarray(template_seg)[None]
    segs, warps = [], []
    for _, _, warp in _registrations(model, images, attributes, batch_size, inverse=False):
        segs.append(_warp_labels(nn, np.repeat(template_seg, len(warp), axis=0), warp))
        warps.append(warp)
    return np.concatenate(segs), np.concatenate(warps)
