"""How a pair is refined after the network: every default in one place, without TensorFlow.

The refinement is the instance-specific optimisation of the TMI 2019 paper: Adam steps of
``-similarity(F, M o phi) + lambda * mean ||grad field||^2`` on the predicted field, coarse to
fine. Each default was chosen on training subjects (never on the validation pairs); the
measurements behind them are in models/README.md ("Choosing the refinement defaults"), earlier
defaults in CHANGELOG.md.
register.py, test.py, :func:`vxm_keras.register` and
:meth:`vxm_keras.registration.Registration.register` all take their defaults from here, and the
command-line help is written from :data:`HELP`.
"""

import dataclasses

__all__ = ['Refinement', 'DEFAULT', 'NETWORK_ALONE', 'CROSS_CONTRAST', 'CONTRAST_FREE', 'IMAGE_LOSS_WEIGHTS',
           'TRAINING_LAMBDA',
           'HELP', 'help_text']

# The image terms of the refinement by name and each one's weight against the smoothness weights
# (set for NCC). 'mind' (MIND-SSC descriptors) is for pairs of different contrasts; its weight 2.5
# was measured on training subjects made T2-like (sub-01, 03, 05 to each other's T1: weight 20 / 10 /
# 5 / 2.5 / 1.25 gave Dice 0.683 / 0.700 / 0.714 / 0.730 / 0.738, affine 0.705) and on the MNI152
# T2 -> T1 (0.808 / 0.816 / 0.815 / 0.792 for 10 / 5 / 2.5 / 1.25), which ruled out 1.25
# (models/README.md, "Other contrasts"). 'ngf' (normalised gradient fields), --cross-contrast's term
# since 2026-12-06: on the same training pairs, weight 0.25 / 0.5 / 1 / 4 / 16 gave 0.740 / 0.742 /
# 0.737 / 0.709 / 0.682 with its edge threshold 0.5, and 1 / 1.5 / 2 gave 0.755 / 0.757 / 0.757 with
# the threshold 2 (the losses.NGF default): weight 1, in 4 s a pair against MIND's 13 s (0.730)
IMAGE_LOSS_WEIGHTS = {'ncc': 1.0, 'mse': 1.0, 'mind': 2.5, 'ngf': 1.0}
# train.py's default smoothness weight (--lambda) for each image term (with the weight above on the
# image term): 1 for NCC and 0.01 for MSE as in the papers; MIND's and NGF's are set so that their
# weighted terms and NCC's meet the same smoothness, as in the refinement, not tuned by training runs
TRAINING_LAMBDA = {'ncc': 1.0, 'mse': 0.01, 'mind': 1.0, 'ngf': 1.0}


@dataclasses.dataclass(frozen=True)
class Refinement:
    """Settings of one registration after the network pass.

    Attributes:
        optimize: Adam steps at half resolution (full resolution for models whose field is on
            the full grid); 0: the network alone, and no coarse or fine steps either.
        coarse: steps at a quarter of the resolution before them (large deformations, cheaply).
        fine: steps at full resolution after them, with smoothness ``fine_lam``.
        lam: smoothness weight of the coarse and half-resolution steps.
        fine_lam: smoothness weight of the full-resolution steps.
        lr: Adam step size, in voxels of the field's grid.
        image_loss: the image term, a key of :data:`IMAGE_LOSS_WEIGHTS`.
        cascade: network passes, each on the previous result, fields composed.
        network: start from the network's field; ``False`` starts from no deformation (pairs the
            network was not trained on, e.g. a T2 moving scan for a network trained on T1 pairs).
    """
    optimize: int = 20
    coarse: int = 25
    fine: int = 5
    lam: float = 2.0
    fine_lam: float = 4.0
    lr: float = 0.1
    image_loss: str = 'ncc'
    cascade: int = 1
    network: bool = True

    def __post_init__(self):
        if self.image_loss not in IMAGE_LOSS_WEIGHTS:
            raise ValueError(f'image_loss must be one of {", ".join(IMAGE_LOSS_WEIGHTS)}, got {self.image_loss!r}')
        if int(self.cascade) < 1 or int(self.optimize) < 0 or int(self.coarse) < 0 or int(self.fine) < 0:
            raise ValueError('cascade must be >= 1 and optimize, coarse and fine >= 0, got '
                             f'{self.cascade}, {self.optimize}, {self.coarse} and {self.fine}')
        if not (self.lam >= 0 and self.fine_lam >= 0 and self.lr > 0):
            raise ValueError(f'lam and fine_lam must be >= 0 and lr > 0, got {self.lam}, {self.fine_lam}, {self.lr}')
        if not self.network and (int(self.optimize) < 1 or int(self.cascade) != 1):
            raise ValueError('starting without the network needs optimize > 0 and cascade 1, '
                             f'got {self.optimize} and {self.cascade}')

    def replace(self, **changes) -> 'Refinement':
        """A copy with ``changes`` (``None`` values keep the current setting)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_kwargs(self) -> dict:
        """The keyword arguments of :meth:`~vxm_keras.registration.Registration.register`."""
        return dataclasses.asdict(self)


# what register.py does: on brains the models never saw, the scan-to-scan VM-2 goes from 0.725
# (network alone) to 0.789 Dice, past ANTs SyN (0.759 in the same run), in 8.8 s against 54.8 s
DEFAULT = Refinement()
NETWORK_ALONE = Refinement(optimize=0)
# --cross-contrast: normalised gradient fields from the affine alignment (the networks saw T1 pairs only),
# smoothness 2 in the full-resolution steps (on the training pairs 0.759 against 0.755 with 4); with
# an image term of CONTRAST_FREE, pipeline.Registrar aligns scans off the grid by mutual information
CROSS_CONTRAST = Refinement(image_loss='ngf', network=False, fine_lam=2.0)
# the image terms that compare scans of different contrasts
CONTRAST_FREE = ('mind', 'ngf')

# command-line help for each setting, with its default written in
HELP = {
    'optimize': ('refine the predicted field on the pair with N Adam steps of the training loss '
                 '(instance-specific optimisation, TMI 2019) at half resolution; 0 for the network alone '
                 '(default {optimize}). Dice and seconds against N: models/README.md'),
    'lam': 'smoothness weight of that refinement (default {lam:g}: folding stays below 0.5 %%)',
    'coarse': ('before those steps, N steps on the pair at a quarter of its resolution (a coarse increment '
               'of the field, for large deformations; each about a quarter of the cost of a step; default {coarse})'),
    'fine': ('after them, N steps on the full-resolution pair (smoothness {fine_lam:g}; each about 8 times the '
             'cost of a half-resolution step; default {fine})'),
    'cascade': 'apply the network K times, each on the previous result, composing the fields (default {cascade})',
    'cross_contrast': ("the moving scan's contrast differs from the fixed scan's (T2, FLAIR or PD to a T1): scans "
                       'off the model grid are aligned by mutual information instead of correlation, and the '
                       'refinement compares edges (normalised gradient fields) instead of intensities, starting from the '
                       'affine alignment rather than the network, which saw T1 pairs only (models/README.md)'),
}


def help_text(name: str, settings: Refinement = DEFAULT) -> str:
    """The ``--help`` line of setting ``name`` with the defaults of ``settings``."""
    return HELP[name].format(**dataclasses.asdict(settings))
