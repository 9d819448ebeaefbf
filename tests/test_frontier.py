"""The registration frontier (python -m vxm_keras.bench.frontier): every configuration registers the
same pairs; its Dice agrees with labels warped by scipy with the engine's own field, the table with
numpy over the per-pair results, and existing outputs are kept."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, scipy_warp, user_error


def _dice(a, b, label):
    a, b = a == label, b == label
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_frontier_registers_every_pair_and_reports_what_it_measured(dataset, tmp_path, capsys):
    from vxm_keras.bench import frontier
    from vxm_keras.io import load_volfile
    from vxm_keras.registration import Registration
    scans = [dataset / 'train' / f's{i}.npz' for i in range(2)]
    listing = tmp_path / 'test.txt'
    listing.write_text('\n'.join(map(str, scans)) + '\n')
    model = dataset / 'run' / '0002.h5'
    out = tmp_path / 'F.md'
    argv = ['--test-list', str(listing), '--methods', f'{model}:0,3c2', '--sets', 'pairs', 'synthetic',
            '--synthetic', '1', '--no-peers', '--out', str(out)]
    assert frontier.main(argv) == 0
    results = json.loads((tmp_path / 'F.json').read_text())
    assert [p['set'] for p in results['pairs']] == ['pairs', 'pairs', 'synthetic', 'synthetic']
    assert [(m['optimize'], m['coarse'], m['fine']) for m in results['methods']] == [(0, None, None), (3, 2, None)]
    # a training checkpoint is named with its folder: two runs' 0002.h5 stay apart in the table
    assert [m['name'] for m in results['methods']] == ['run/0002, network alone', 'run/0002 +3 steps (2 coarse)']
    # the affine row of a real pair is the Dice of the label maps as they are (label 17: the blob)
    segs = [load_volfile(s, key='seg') for s in scans]
    vols = [load_volfile(s) for s in scans]
    assert np.isclose(results['pairs'][0]['affine'], _dice(segs[0], segs[1], 17))
    # the network alone: the moving labels warped by scipy (nearest) with the engine's field
    warp = Registration(str(model)).register(vols[0], vols[1]).warp
    moved = scipy_warp(segs[0][..., None].astype(np.float32), warp, order=0)[..., 0]
    alone = results['methods'][0]['pairs'][0]
    assert abs(alone['dice'] - _dice(moved, segs[1], 17)) < 0.01
    assert all(p['seconds'] > 0 and 0 <= p['folding'] < 1 for m in results['methods'] for p in m['pairs'])
    # the table: numpy's mean (std) over each set's pairs, the median seconds; the figure is there
    table = out.read_text()
    refined = results['methods'][1]['pairs']
    d = [p['dice'] for p in refined[:2]]
    cell = f'| {results["methods"][1]["name"]} | {np.mean(d):.3f} ({np.std(d):.3f}) |'
    assert cell in table
    assert f'| {np.median([p["seconds"] for p in refined]):.1f} |' in table.split(cell)[1].splitlines()[0]
    assert (tmp_path / 'F.png').stat().st_size > 10000
    # the table and figure again from the JSON alone, without measuring
    assert frontier.main(['--from-json', str(tmp_path / 'F.json'), '--out', str(tmp_path / 'G.md')]) == 0
    assert (tmp_path / 'G.md').read_text() == table and (tmp_path / 'G.png').exists()
    # a second run does not replace the results without --overwrite
    before = out.read_text()
    assert frontier.main(argv) == 2
    assert 'exists' in capsys.readouterr().err and out.read_text() == before


def test_frontier_bad_method_is_one_line_before_tensorflow(tmp_path):
    proc = subprocess.run([sys.executable, '-m', 'vxm_keras.bench.frontier', '--methods', 'model.h5:ten',
                           '--out', str(tmp_path / 'F.md')], capture_output=True, text=True, cwd=REPO)
    assert 'expected MODEL:STEPS' in user_error(proc)
    assert not (tmp_path / 'F.md').exists()


def test_method_specs():
    from vxm_keras.bench.frontier import parse_method
    from vxm_keras.errors import UserError
    assert parse_method('m.h5:0,20,25f0,20c50f10') == ('m.h5', [(0, None, None), (20, None, None), (25, None, 0),
                                                              (20, 50, 10)])
    for bad in ['m.h5:25x', 'm.h5:f5', 'm.h5:', '25']:
        with pytest.raises(UserError, match='expected MODEL:STEPS'):
            parse_method(bad)
