"""The benchmark: the quick run end to end (its results read from the JSON it writes, not from the
Markdown layout), and the report rendered from known results."""
import json
import os
import subprocess
import sys

from vxm_keras.bench.report import render


def test_bench_quick_measures_everything(tmp_path):
    out = tmp_path / 'RESULTS.md'
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    subprocess.run([sys.executable, '-m', 'vxm_keras.bench', '--quick', '--no-xla', '--batch-scans', '3', '--out', str(out)],
                   check=True, env=env, capture_output=True)
    results = json.loads((tmp_path / 'RESULTS.json').read_text())
    assert out.read_text() == render(results)
    (row,), (block,) = results['rows'], results['blocks']
    assert row['tag'] == '32x32x32' and row['model'] == 'vm1'
    for kind in ('forward', 'train', 'batch', 'batch_short'):
        assert 'error' not in row[kind], row[kind]
    assert row['forward']['plain']['best'] > 0 and row['train']['full']['best'] > 0
    # register.py's own code reported its parts, and they fit in the process's wall time
    (reg,) = row['register']
    assert len(reg['parts']) == 3 and all(t >= 0 for t in reg['parts']) and sum(reg['parts']) < reg['wall']
    # the longer batch took longer than the short one (the added-scan cost is positive)
    assert row['batch']['wall'] > 0 and row['batch_short']['wall'] > 0
    # the benchmark's NCC agrees with the dense 9^3 reference; the warp ran against scipy
    assert block['ncc']['rel_diff'] < 1e-5
    assert block['warp']['ours']['best'] > 0 and block['warp']['scipy']['best'] > 0


def _timing(best):
    return {'best': best, 'median': best * 1.5}


def test_report_renders_known_results():
    row = {'tag': '8x8x8', 'model': 'vm2', 'forward': {'plain': _timing(0.5), 'xla': _timing(0.25), 'maxrss_mib': 100},
           'train': {'full': _timing(2.0), 'unet': _timing(1.0), 'maxrss_mib': 200}, 'train_xla': {},
           'register': [{'wall': 5.0, 'parts': [1.0, 1.0, 0.5], 'maxrss_mib': 300},
                        {'wall': 6.0, 'parts': [1.0, 2.0, 0.5], 'maxrss_mib': 310}],
           'batch': {'wall': 10.0}, 'batch_short': {'wall': 6.0}}
    block = {'tag': '8x8x8', 'ncc': {'ours': _timing(0.1), 'dense': _timing(0.5), 'rel_diff': 1e-7},
             'warp': {'ours': _timing(0.2), 'scipy': _timing(1.0)}}
    results = {'machine': 'test machine', 'command': 'python -m vxm_keras.bench', 'note': None, 'repeats': 2,
               'batch_scans': 4, 'short_batch': 2, 'rows': [row], 'blocks': [block], 'peers': False,
               'peer': None, 'pair': None, 'shared_freesurfer': '/nowhere'}
    text = render(results)
    lines = text.splitlines()
    reg_line = next(line for line in lines if line.startswith('| 8x8x8 | vm2 | 0.500'))
    # end to end best 5.0 s = 10x the forward; start-up = 5.0 - 2.5; batch 10 s / 4 scans = 2.5 s a scan;
    # the added scan (10 - 6) / 2 = 2.0 s = 4x the forward; peak of the two register runs
    assert '| 5.000 / 5.500 | 10.00 | 2.50 | 1.00 | 1.00 | 0.50 | 100 | 310 | 2.50 | 5.00 | 2.00 | 4.00 |' in reg_line
    train_line = next(line for line in lines if line.startswith('| 8x8x8 | vm2 | 2.000'))
    assert '| 100 % |' in train_line  # the step is twice the bare U-Net's
    assert '| 5.0x | 1.0e-07 |' in text and '| 5.0x |' in text.split('Building blocks')[1]
    assert '## Errors' not in text
    row['train'] = {'error': 'OOM'}
    assert '- 8x8x8 vm2 train: OOM' in render(results)


def test_bench_reads_the_unet_resolution_of_a_saved_model(tmp_path):
    import vxm_keras
    from vxm_keras.bench.run import _unet_downsize
    for downsize in (1, 2):
        path = tmp_path / f'd{downsize}.h5'
        vxm_keras.save_model(vxm_keras.vm2((64, 64), unet_downsize=downsize), path)
        assert _unet_downsize(path) == downsize


def test_cpu_benchmark_takes_the_median_run():
    """Repeated runs: the median one (the lower middle of an even count) with every run's seconds;
    a failed run is reported, not hidden among the others."""
    from vxm_keras.bench.cpu import _median_run
    runs = [{'wall': 12.0, 'printed': 'a'}, {'wall': 9.0, 'printed': 'b'}, {'wall': 10.0, 'printed': 'c'}]
    assert _median_run(runs, 'wall') == {'wall': 10.0, 'printed': 'c', 'runs': [12.0, 9.0, 10.0]}
    assert _median_run(runs + [{'wall': 11.0}], 'wall')['wall'] == 10.0
    assert _median_run(runs[:1], 'wall')['runs'] == [12.0]
    assert _median_run(runs + [{'error': 'boom'}], 'wall') == {'error': 'boom'}


def test_cpu_report_renders_known_results():
    """The CPU benchmark's table from known numbers: register.py 50 s (its first run, compiling,
    60 s) against SyN 100 s is 0.50 of SyN's time; the worker's 40 s less its registrations (20 + 10 s) and writing (1 s) leave
    9.0 s of start-up and loading; stage cells are first / second pair."""
    from vxm_keras.bench.cpu import render
    stages = {'wall': 40.0, 'load': 5.0, 'write': 1.0, 'onednn': False, 'maxrss_mib': 2048.0,
              'first': {'network': 2.0, 'coarse': 3.0, 'optimize': 5.0, 'fine': 9.0, 'finish': 1.0, 'total': 20.0},
              'second': {'network': 1.0, 'coarse': 1.0, 'optimize': 3.0, 'fine': 4.5, 'finish': 0.5, 'total': 10.0}}
    results = {'optimize': 20, 'machine': 'test machine', 'cpu': 'flags', 'command': 'cmd',
               'rows': [{'setting': 'off', 'label': 'oneDNN off', 'register_py': {'wall': 50.0},
                         'register_py_first': {'wall': 60.0}, 'stages': stages, 'moved_ncc_to_first': 1.0}],
               'syn': {'seconds': 100.0, 'maxrss_mib': 1024.0, 'moved_ncc_to_fixed': 0.98}}
    row = next(line for line in render(results).splitlines() if line.startswith('| off'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[1:6] == ['False', '50.0', '0.50', '60.0', '9.0']
    assert cells[6:11] == ['2.00 / 1.00', '3.00 / 1.00', '5.00 / 3.00', '9.00 / 4.50', '1.00 / 0.50']
    assert cells[11:] == ['20.0', '10.0', '1.00', '2.00', '1.00000']
    # repeated runs: the medians' ratio, the ranges beside them
    results['rows'][0]['register_py'] = {'wall': 50.0, 'runs': [55.0, 50.0, 45.0]}
    results['syn'].update(seconds=125.0, runs=[125.0, 120.0, 130.0])
    text = render(results)
    row = next(line for line in text.splitlines() if line.startswith('| off'))
    assert [c.strip() for c in row.strip('|').split('|')][2:4] == ['50.0 (45.0-55.0)', '0.40']
    assert 'same pair: 125.0 (120.0-130.0) s' in text
