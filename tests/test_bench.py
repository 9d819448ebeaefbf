"""Smoke test of the benchmark script on a tiny shape (its numbers are not asserted: they are timings)."""
import os
import subprocess
import sys


def test_bench_quick_writes_a_table(tmp_path):
    out = tmp_path / 'RESULTS.md'
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
    subprocess.run([sys.executable, '-m', 'vxm_keras.bench', '--quick', '--batch-scans', '3', '--out', str(out)],
                   check=True, env=env, capture_output=True)
    text = out.read_text()
    assert '| 32x32x32 | vm1 |' in text and 'Machine:' in text
    assert '## Errors' not in text, text
    # the short batch run for the added-scan cost ran too
    vm1 = [line for line in text.splitlines() if line.startswith('| 32x32x32 | vm1 |')][0]
    float(vm1.split('|')[-3])
    # the NCC of the benchmark agrees with the dense reference
    row = [line for line in text.splitlines() if line.startswith('| 32x32x32 | 0.')][0]
    assert float(row.split('|')[5]) < 1e-5


def test_bench_reads_the_unet_resolution_of_a_saved_model(tmp_path):
    import vxm_keras
    from vxm_keras.bench import _unet_downsize
    for downsize in (1, 2):
        path = tmp_path / f'd{downsize}.h5'
        vxm_keras.save_model(vxm_keras.vm2((64, 64), unet_downsize=downsize), path)
        assert _unet_downsize(path) == downsize
