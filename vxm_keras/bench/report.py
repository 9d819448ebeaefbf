"""The benchmark's report: Markdown from the results :func:`vxm_keras.bench.run.collect` returns.

Rendering is apart from measuring, so the table's layout can change without a new run (the
results are also written as JSON beside the report) and the tests check numbers, not columns.
"""

import os
import platform
import statistics

PAPER_CPU_SECONDS = 144.0  # VM-2 per pair on a CPU, CVPR 2018 Table 1


def machine_description():
    import keras
    import numpy as np
    import tensorflow as tf
    cpu = platform.processor() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        if names:
            cpu = names[0]
    except OSError:
        pass
    gpus = tf.config.list_physical_devices('GPU')
    return (f'{cpu}; {os.cpu_count()} logical cores; '
            f'GPU: {", ".join(g.name for g in gpus) if gpus else "none"}; '
            f'Python {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}, '
            f'NumPy {np.__version__}; {platform.platform()}')


def _fmt(t):
    if not isinstance(t, dict) or 'best' not in t:
        return 'n/a'
    return f'{t["best"]:.3f} / {t["median"]:.3f}'


def _best(times):
    return {'best': min(times), 'median': statistics.median(times)} if times else None


def render(results):
    """The Markdown report of ``results`` (a dict: ``machine``, ``command``, ``repeats``, ``note``,
    ``batch_scans``, ``short_batch``, ``rows``, ``blocks``, ``peers``, ``peer``, ``pair``,
    ``shared_freesurfer``)."""
    repeats, batch_scans, short_batch = results['repeats'], results['batch_scans'], results['short_batch']
    rows, blocks, peer, peers, pair = (results[k] for k in ('rows', 'blocks', 'peer', 'peers', 'pair'))
    note = results.get('note')
    lines = ['# vxm-keras benchmark', '', f'Machine: {results["machine"]}', '',
             *([f'Note: {note}', ''] if note else []),
             f'Command: `{results["command"]}`', '',
             f'Times in seconds, best / median of {repeats} runs after a warm-up; '
             'memory is the peak resident set of the measuring process (MiB). Every measurement runs '
             'in its own process; ratios compare numbers of this run.', '']
    lines += ['## Registration (random weights; the shipped example scan, atlas and atlas labels)', '',
              '| size | model | forward | forward XLA | register.py end to end | end to end / forward | '
              'start-up + imports | read + model load | predict + label warp | write | '
              'peak MiB forward | peak MiB register.py | batch: s per scan | batch per scan / forward | '
              'batch: s per added scan | added scan / forward |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        plain = row['forward'].get('plain', {})
        regs = [r for r in row['register'] if 'wall' in r]
        e2e = _best([r['wall'] for r in regs])
        best_run = min(regs, key=lambda r: r['wall']) if regs else {}
        parts = best_run.get('parts')
        start = f'{best_run["wall"] - sum(parts):.2f}' if parts else 'n/a'
        part_cells = [f'{v:.2f}' for v in parts] if parts else ['n/a'] * 3
        ratio = f'{e2e["best"] / plain["best"]:.2f}' if e2e and 'best' in plain else 'n/a'
        batch = row['batch']
        per_scan = batch['wall'] / batch_scans if 'wall' in batch else None
        batch_ratio = f'{per_scan / plain["best"]:.2f}' if per_scan and 'best' in plain else 'n/a'
        short = row['batch_short']
        added = ((batch['wall'] - short['wall']) / (batch_scans - short_batch)
                 if 'wall' in batch and 'wall' in short else None)
        added_ratio = f'{added / plain["best"]:.2f}' if added and 'best' in plain else 'n/a'
        peak_reg = max((r.get('maxrss_mib', 0) for r in regs), default=0)
        lines.append(f'| {row["tag"]} | {row["model"]} | {_fmt(plain)} | {_fmt(row["forward"].get("xla"))} | '
                     f'{_fmt(e2e)} | {ratio} | {start} | {" | ".join(part_cells)} | '
                     f'{row["forward"].get("maxrss_mib", 0):.0f} | {peak_reg:.0f} | '
                     f'{"n/a" if per_scan is None else f"{per_scan:.2f}"} | {batch_ratio} | '
                     f'{"n/a" if added is None else f"{added:.2f}"} | {added_ratio} |')
    lines += ['', 'Forward: the model (U-Net, integration if any, warp) on one pair, in a `tf.function`. '
              'End to end: `register.py` with moving scan, labels and outputs as files, including Python '
              'start-up, imports, reading, model loading, prediction, nearest-neighbour label warp and '
              f'atomic writes. Batch: `register.py --moving DIR --out-dir OUT` over {batch_scans} scans '
              '(one process; reading and writing overlap prediction), wall time per scan including start-up. '
              f'Added scan: the wall time of that run minus that of the same command over {short_batch} scans, '
              f'per extra scan: what one more scan costs once start-up, imports and model loading are paid '
              '(reading, prediction, warp and writing).',
              '', '## Training step (batch 1, NCC + Grad, Adam)', '',
              '| size | model | step | step XLA | bare U-Net step | warp + losses over the U-Net | '
              'peak MiB | peak MiB XLA |', '|---|---|---|---|---|---|---|---|']
    for row in rows:
        train, xla = row['train'], row['train_xla']
        full, unet = train.get('full', {}), train.get('unet', {})
        over = f'{100 * (full["best"] / unet["best"] - 1):.0f} %' if 'best' in full and 'best' in unet else 'n/a'
        xla_peak = f'{xla["maxrss_mib"]:.0f}' if 'maxrss_mib' in xla else 'n/a'
        lines.append(f'| {row["tag"]} | {row["model"]} | {_fmt(full)} | {_fmt(xla.get("full"))} | {_fmt(unet)} | '
                     f'{over} | {train.get("maxrss_mib", 0):.0f} | {xla_peak} |')
    lines += ['', '## Building blocks', '',
              '| size | NCC fwd+bwd (separable) | NCC fwd+bwd dense 9^3 (original) | speed-up | relative '
              'difference of the loss | warp (SpatialTransformer) | scipy map_coordinates | speed-up |',
              '|---|---|---|---|---|---|---|---|']
    for b in blocks:
        ncc, warp = b['ncc'], b['warp']
        sp = f'{ncc["dense"]["best"] / ncc["ours"]["best"]:.1f}x' if 'ours' in ncc else 'n/a'
        wp = f'{warp["scipy"]["best"] / warp["ours"]["best"]:.1f}x' if 'ours' in warp else 'n/a'
        rel = f'{ncc["rel_diff"]:.1e}' if 'rel_diff' in ncc else 'n/a'
        lines.append(f'| {b["tag"]} | {_fmt(ncc.get("ours"))} | {_fmt(ncc.get("dense"))} | {sp} | {rel} | '
                     f'{_fmt(warp.get("ours"))} | {_fmt(warp.get("scipy"))} | {wp} |')
    if peers:
        lines += ['', '## Peers on a real pair', '']
        if peer is None:
            lines.append(f'No real pair: pass --pair MOVING.npz FIXED.npz or provide {results["shared_freesurfer"]}.')
        else:
            peer_rows, n_labels = peer['rows'], peer['n_labels']
            vxm = next((r for r in peer_rows if r['method'].startswith('VM-2')), None)
            lines += [f'Moving {os.path.basename(pair[0]) if pair else "sub-07"} to fixed '
                      f'{os.path.basename(pair[1]) if pair else "sub-08"} (prepared, affinely aligned '
                      f'to MNI305); mean Dice over the {n_labels} of the 30 structures present in both.', '',
                      '| method | seconds | x slower than VM-2 | Dice |', '|---|---|---|---|']
            for r in peer_rows:
                secs = 'n/a' if r['seconds'] is None else f'{r["seconds"]:.1f}'
                slower = (f'{r["seconds"] / vxm["seconds"]:.1f}' if r['seconds'] and vxm and vxm['seconds']
                          else '')
                d = 'n/a' if r['dice'] is None else f'{r["dice"]:.3f}'
                lines.append(f'| {r["method"]} | {secs} | {slower} | {d} |' + (f' {r["error"]}' if r.get('error') else ''))
            if vxm and vxm['seconds']:
                lines += ['', f'The CVPR 2018 paper reports VM-2 at {PAPER_CPU_SECONDS:.0f} s per pair on a CPU: '
                          f'{PAPER_CPU_SECONDS / vxm["seconds"]:.1f}x the end-to-end time here.']
    errors = [(row['tag'], row['model'], k, row[k]['error']) for row in rows
              for k in ('forward', 'train', 'train_xla', 'batch', 'batch_short') if 'error' in row[k]]
    errors += [(b['tag'], '', k, b[k]['error']) for b in blocks for k in ('ncc', 'warp') if 'error' in b[k]]
    errors += [(row['tag'], row['model'], 'register', r['error']) for row in rows for r in row['register']
               if 'error' in r]
    if errors:
        lines += ['', '## Errors', ''] + [f'- {t} {m} {k}: {e}' for t, m, k, e in errors]
    return '\n'.join(lines) + '\n'
