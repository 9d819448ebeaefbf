"""Learned (conditional) templates (NeurIPS 2019) on small synthetic 2-D data."""
import keras
import numpy as np
import pytest

import vxm_keras
from vxm_keras import losses
from vxm_keras.layers import MeanStream
from vxm_keras.networks import TemplateCreation

S = 32
YY, XX = np.meshgrid(np.arange(S), np.arange(S), indexing='ij')


def ellipse(cy, cx, r):
    return (((YY - cy) / (1.4 * r)) ** 2 + ((XX - cx) / r) ** 2 < 1).astype(np.float32)


def compiled(model, gamma=10.0):
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=[losses.MSE(image_sigma=0.1), losses.MSE(), losses.DisplacementPenalty(0.0, 1.0)],
                  loss_weights=[1.0, gamma, 1.0])
    return model


def test_mean_stream_running_mean():
    import tensorflow as tf
    layer = MeanStream(cap=1000)
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    layer(tf.constant(a), training=True)
    out = layer(tf.constant(a + 10), training=True).numpy()
    np.testing.assert_allclose(out[0], (a.sum(0) + (a + 10).sum(0)) / 6)
    np.testing.assert_allclose(layer(tf.constant(a), training=False).numpy()[0], out[0])


@pytest.fixture(scope='module')
def shifted_set():
    rng = np.random.default_rng(0)
    shifts = rng.uniform(-4, 4, (64, 2))
    shifts -= shifts.mean(0)
    return np.stack([ellipse(16 + dy, 16 + dx, 5) for dy, dx in shifts])[..., None]


def test_template_of_shifted_copies_is_the_centred_shape(shifted_set, tmp_path):
    keras.utils.set_random_seed(0)
    imgs = shifted_set
    mean = imgs.mean(0)[..., 0]
    model = compiled(TemplateCreation((S, S), template_init=mean, int_downsize=1))
    zeros = np.zeros((len(imgs), S, S, 2), np.float32)
    model.fit(imgs, [imgs, zeros, zeros], batch_size=8, epochs=40, verbose=0)
    template = model.templates()
    centred = ellipse(16, 16, 5)

    def corr(a):
        return np.corrcoef(a.ravel(), centred.ravel())[0, 1]
    # sharper than the blurred mean, and centred
    assert corr(template) > corr(mean) + 0.03, (corr(template), corr(mean))
    weights = np.clip(template, 0, None)
    centroid = [(weights * g).sum() / weights.sum() for g in (YY, XX)]
    assert np.allclose(centroid, 16, atol=1.0), centroid
    # the average deformation over the training set goes to about zero
    _, warp = model.warp_model().predict(imgs, verbose=0)
    assert np.abs(warp.mean(0)).mean() < 0.3 * np.abs(warp).mean()
    # saved and reloaded, the template comes back
    vxm_keras.save_model(model, tmp_path / 't.h5')
    np.testing.assert_allclose(vxm_keras.load_model(tmp_path / 't.h5').templates(), template, atol=1e-6)


def test_conditional_templates_follow_the_attribute():
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    scales = rng.uniform(3, 8, 96).astype(np.float32)
    imgs = np.stack([ellipse(16 + rng.uniform(-2, 2), 16 + rng.uniform(-2, 2), r) for r in scales])[..., None]
    attributes = ((scales - 5.5) / 2.5)[:, None]
    model = compiled(TemplateCreation((S, S), n_attributes=1, template_init=imgs.mean(0)[..., 0],
                                      int_downsize=1))
    zeros = np.zeros((len(imgs), S, S, 2), np.float32)
    model.fit([imgs, attributes], [imgs, zeros, zeros], batch_size=8, epochs=40, verbose=0)
    small, large = model.templates(np.array([[-1.0], [1.0]]))
    area = [np.sum(t > 0.5) for t in (small, large)]
    assert area[1] > 1.5 * area[0], area


def test_majority_vote_by_hand():
    from vxm_keras.templates import majority_vote
    segs = np.array([[[1, 2], [0, 3]], [[1, 2], [3, 3]], [[2, 0], [3, 0]]])
    np.testing.assert_array_equal(majority_vote(segs), [[1, 2], [3, 3]])
    # ties go to the smaller label
    np.testing.assert_array_equal(majority_vote(np.array([[5], [4]])), [4])


def test_template_segmentation_of_shifted_labels(shifted_set):
    """Labels of shifted copies, brought into template space, agree with the template's shape."""
    from vxm_keras.metrics import dice
    from vxm_keras.templates import template_segmentation
    keras.utils.set_random_seed(3)
    imgs = shifted_set
    model = compiled(TemplateCreation((S, S), template_init=imgs.mean(0)[..., 0], int_downsize=1))
    zeros = np.zeros((len(imgs), S, S, 2), np.float32)
    model.fit(imgs, [imgs, zeros, zeros], batch_size=8, epochs=40, verbose=0)
    segs = (imgs[..., 0] > 0.5).astype(np.int32) * 7
    seg = template_segmentation(model, imgs[..., 0], segs, batch_size=16)
    template_shape = (model.templates() > 0.5).astype(np.int32) * 7
    # the warped labels line up with the learned template's shape
    assert dice(seg, template_shape, [7])[1][0] > 0.9
    # each inverse warp brings its own image onto the template
    _, _, inverse = model.warp_model(inverse=True).predict(imgs, verbose=0)
    from vxm_keras.layers import SpatialTransformer
    to_template = SpatialTransformer()([imgs, inverse]).numpy()[..., 0]
    err_registered = np.abs(to_template - model.templates()).mean()
    err_raw = np.abs(imgs[..., 0] - model.templates()).mean()
    assert err_registered < 0.6 * err_raw, (err_registered, err_raw)


def test_downsize_helpers_match_brute_force():
    from vxm_keras.templates import downsize_images, downsize_labels
    rng = np.random.default_rng(0)
    images = rng.random((2, 4, 6, 8))
    segs = rng.integers(0, 9, (2, 4, 6, 8))
    small, labs = downsize_images(images, 2), downsize_labels(segs, 2)
    assert small.shape == labs.shape == (2, 2, 3, 4)
    for n, i, j, k in np.ndindex(*small.shape):
        block = images[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2, 2 * k:2 * k + 2]
        assert small[n, i, j, k] == pytest.approx(block.mean())
        assert labs[n, i, j, k] == segs[n, 2 * i + 1, 2 * j + 1, 2 * k + 1]
    with pytest.raises(ValueError, match='does not divide'):
        downsize_images(rng.random((1, 5, 6)), 2)


def test_test_py_scores_a_learned_template(tmp_path):
    """test.py on a template model: the template's labels, moved by the registration (here a
    known 2-voxel shift set through the flow bias), scored against downsized test labels."""
    import csv
    import os
    import subprocess
    import sys

    from vxm_keras.io import save_volfile
    from vxm_keras.metrics import dice
    from vxm_keras.templates import downsize_labels

    shape, small = (32, 32, 32), (16, 16, 16)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in small], indexing='ij'), -1)
    tseg = np.zeros(small, np.int32)
    tseg[np.linalg.norm(grid - [7, 8, 8], axis=-1) < 4] = 17
    tseg[np.linalg.norm(grid - [8, 8, 4], axis=-1) < 2.5] = 2
    model = TemplateCreation(small, int_downsize=2, template_init=tseg.astype(np.float32))
    flow = model.get_layer('flow')
    kernel, bias = flow.get_weights()
    flow.set_weights([np.zeros_like(kernel), np.array([2.0, 0.0, 0.0], np.float32)])
    vxm_keras.save_model(model, str(tmp_path / 'template_model.h5'))
    save_volfile(str(tmp_path / 'template.npz'), tseg.astype(np.float32), extra={'seg': tseg})

    rng = np.random.default_rng(1)
    files = []
    for n, centre in enumerate([(18, 16, 16), (14, 17, 15)]):
        big = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing='ij'), -1)
        seg = np.zeros(shape, np.int32)
        seg[np.linalg.norm(big - centre, axis=-1) < 8] = 17
        seg[np.linalg.norm(big - [16, 16, 8], axis=-1) < 5] = 2
        path = tmp_path / f's{n}.npz'
        save_volfile(str(path), rng.random(shape).astype(np.float32), extra={'seg': seg})
        files.append(path)
    (tmp_path / 'test.txt').write_text('\n'.join(map(str, files)))

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, os.path.join(repo, 'test.py'), '--model', tmp_path / 'template_model.h5',
                           '--test-list', tmp_path / 'test.txt', '--out-dir', tmp_path / 'eval'],
                          capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / 'eval' / 'dice.csv') as f:
        rows = list(csv.DictReader(f))
    # moved(x) = template_seg(x + (2, 0, 0)): a shift of the array by two voxels along axis 0
    shifted = np.zeros_like(tseg)
    shifted[:-2] = tseg[2:]
    for n, path in enumerate(files):
        seg = downsize_labels(np.load(path)['seg'][None], 2)[0]
        for method, moved in (('affine', tseg), ('model', shifted)):
            for lab in (2, 17):
                got = [float(r['dice']) for r in rows if r['pair'] == f'template->s{n}'
                       and r['method'] == method and int(r['label']) == lab]
                assert got == [pytest.approx(dice(moved, seg, [lab])[1][0], abs=1e-9)], (method, lab)
    assert 'tissue classes (template labels warped to each test scan)' in proc.stdout
