import glob

from setuptools import find_packages, setup

with open('README.md', encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='vxm-keras',
    version='0.1.0',
    description='Unsupervised deformable image registration (VoxelMorph) in TensorFlow 2 / Keras 3',
    long_description=long_description,
    long_description_content_type='text/markdown',
    packages=find_packages(include=['vxm_keras', 'vxm_keras.*']),
    # the default atlas, the example scan and the trained models, for plain (non-editable)
    # installs: found through vxm_keras.shipped
    data_files=[
        ('share/vxm-keras/data', ['data/atlas.npz', 'data/example_moving.npz', 'data/example_native.nii.gz',
                                   'data/README.md']),
        ('share/vxm-keras/models', sorted(glob.glob('models/*.h5')) + ['models/README.md']),
    ],
    python_requires='>=3.10',
    # lower bounds: the oldest versions a test environment ran (README, Install); no upper
    # bounds, the suite turns deprecation warnings into errors instead
    install_requires=[
        # the default Keras 3 with the TensorFlow backend; tensorflow-cpu users:
        # see the README (never install both wheels in one environment)
        'tensorflow>=2.16',
        'keras>=3.3',
        'numpy>=1.26',
        'scipy>=1.11',
        'nibabel>=5.1',
        'h5py>=3.10',
        'matplotlib>=3.8',
        # TensorFlow's and Keras's own dependency, capped: ml_dtypes 0.7.0 takes 0.55-0.6 s to import
        # (its ufunc loops registered one by one; 0.6.0: 4-7 ms, numpy 2.3 and 2.4 alike), every
        # command's start-up, 6 % of register.py on the example scan
        'ml_dtypes>=0.5.1,<0.7',
    ],
    extras_require={
        # pytest-xdist: the suite runs on two workers (pytest.ini), about half the time on 2 cores
        'test': ['pytest', 'pytest-xdist>=3.2', 'hypothesis'],  # 3.2: --dist worksteal
        # peers for the benchmark (python -m vxm_keras.bench --peers), never needed otherwise
        'peers': ['antspyx'],
    },
    license='Apache-2.0',
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Medical Science Apps.',
        'Topic :: Scientific/Engineering :: Image Processing',
    ],
)
