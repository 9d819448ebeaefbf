"""The default registration on this CPU, with each of TensorFlow's CPU kernel settings, beside
ANTs SyN on the same pair, in one run (only ratios measured in one run compare across machines).

    python -m vxm_keras.bench.cpu --out bench/CPU.md
    python -m vxm_keras.bench.cpu --out /tmp/cpu.md --settings default off --no-peers

For each setting of ``TF_ENABLE_ONEDNN_OPTS`` / ``ONEDNN_MAX_CPU_ISA`` (:data:`SETTINGS`):
``register.py`` on the quick start's pair (the shipped example scan to the atlas) end to end,
as a user runs it, with a new compilation cache (:mod:`vxm_keras.compile_cache`): the first run
on a machine compiles the XLA kernels, later runs load them (``--repeats`` later runs, taken in
turns across the settings so that the host's slow minutes fall on all of them; their median is
reported beside the range, and compared with SyN's median); then, in a fresh process
with that cache, the same registration twice through the library with the seconds of each stage
(loading, network, the optimisation's coarse / half / full-resolution steps, finishing, writing)
and the process's peak memory. The moved images of
every setting are compared with the first setting's (global NCC). ANTs SyN (antspyx defaults,
``pip install -e '.[peers]'``) registers the same pair ``--repeats`` times.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

from ..errors import UserError
from ..shipped import DEFAULT_ATLAS, DEFAULT_MODEL, REPO, shipped_file
from .workers import environment, global_ncc, run_worker

# name -> (what it stands for, the variables: None removes one)
SETTINGS = {
    'default': ('the variable unset: what a vxm_keras user gets (oneDNN on x86, vxm_keras.device)',
                {'TF_ENABLE_ONEDNN_OPTS': None, 'ONEDNN_MAX_CPU_ISA': None}),
    'off': ("oneDNN off: Eigen kernels, TensorFlow's own choice on x86 CPUs without AVX512-VNNI/BF16/AMX",
            {'TF_ENABLE_ONEDNN_OPTS': '0', 'ONEDNN_MAX_CPU_ISA': None}),
    'on': ('oneDNN on', {'TF_ENABLE_ONEDNN_OPTS': '1', 'ONEDNN_MAX_CPU_ISA': None}),
    'avx2': ('oneDNN on, capped at AVX2 (as an AVX2-only CPU runs it)',
             {'TF_ENABLE_ONEDNN_OPTS': '1', 'ONEDNN_MAX_CPU_ISA': 'AVX2'}),
}
STAGES = ('network', 'coarse', 'optimize', 'fine', 'finish')


def cpu_flags():
    """The CPU's name and the flags that decide TensorFlow's oneDNN default (Linux; else '')."""
    try:
        with open('/proc/cpuinfo') as f:
            text = f.read()
    except OSError:
        return ''
    name = next((line.split(':', 1)[1].strip() for line in text.splitlines() if line.startswith('model name')), '')
    flags = set(next((line.split(':', 1)[1].split() for line in text.splitlines() if line.startswith('flags')), []))
    wanted = ['avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'amx_tile']
    return f'{name}; ' + ', '.join(f'{flag} {"yes" if flag in flags else "no"}' for flag in wanted)


def _register_py(setting_env, moving, moved, optimize):
    """``register.py`` end to end as a user runs it, with these variables: wall seconds and what it printed."""
    cmd = [sys.executable, os.path.join(REPO, 'register.py'), '--moving', moving, '--moved', moved, '--overwrite',
           '--optimize', str(optimize)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=environment(setting_env))
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {'error': (proc.stderr.strip().splitlines() or ['failed'])[-1]}
    return {'wall': wall, 'printed': proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ''}


def _median_run(runs, key):
    """The run of median ``run[key]`` seconds (the lower middle one of an even count), with every
    run's seconds under ``'runs'``; the first failed run (``'error'``) if any failed."""
    failed = [run for run in runs if key not in run]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda run: run[key])
    return dict(ordered[(len(ordered) - 1) // 2], runs=[run[key] for run in runs])


def collect(settings, peers, optimize, tmp, repeats=1):
    """Measure; returns the results as a dict (see :func:`render`)."""
    from ..compile_cache import VARIABLE, machine_tag
    from ..io import load_volfile
    moving = shipped_file('data/example_moving.npz')
    rows, envs = [], {}
    for name in settings:
        label, env = SETTINGS[name]
        # each setting starts from an empty compilation cache of its own
        cache = os.path.join(tmp, f'xla_{name}')
        envs[name] = dict(env, **{VARIABLE: cache})
        print(f'{name}: register.py end to end, first run (compiling) ...', flush=True)
        e2e_first = _register_py(envs[name], moving, os.path.join(tmp, f'{name}_cmd.npz'), optimize)
        rows.append({'setting': name, 'label': label, 'register_py_first': e2e_first, 'later': []})
    for k in range(repeats):
        for row in rows:
            print(f'{row["setting"]}: register.py end to end, later run {k + 1} of {repeats} ...', flush=True)
            row['later'].append(_register_py(envs[row['setting']], moving,
                                             os.path.join(tmp, f'{row["setting"]}_cmd.npz'), optimize))
    for row in rows:
        name = row['setting']
        row['register_py'] = _median_run(row.pop('later'), 'wall')
        print(f'{name}: stages ...', flush=True)
        params = {'moving': moving, 'fixed': DEFAULT_ATLAS, 'model_file': DEFAULT_MODEL,
                  'moved': os.path.join(tmp, f'{name}_lib.npz'), 'optimize': optimize}
        flags = f'--tf_xla_persistent_cache_directory={os.path.join(tmp, f"xla_{name}", machine_tag())}'
        row['stages'] = run_worker('stages', params, env=dict(SETTINGS[name][1], TF_XLA_FLAGS=flags))
    first = None
    for row in rows:
        path = os.path.join(tmp, f'{row["setting"]}_lib.npz')
        if os.path.exists(path):
            moved = load_volfile(path)
            first = moved if first is None else first
            row['moved_ncc_to_first'] = global_ncc(moved, first)
    results = {'rows': rows, 'optimize': optimize, 'repeats': repeats}
    if peers:
        runs = []
        for k in range(repeats):
            print(f'ANTs SyN, run {k + 1} of {repeats} ...', flush=True)
            runs.append(run_worker('syn_image', {'moving': moving, 'fixed': DEFAULT_ATLAS,
                                                 'moved': os.path.join(tmp, 'syn.npy')}))
        results['syn'] = _median_run(runs, 'seconds')
    return results


def _s(value, digits=1):
    return 'n/a' if value is None else f'{value:.{digits}f}'


def _spread(value, runs):
    """``value`` and, for more than one run, the range of ``runs``: ``10.2 (9.8-11.0)``."""
    if not runs or len(runs) < 2:
        return _s(value)
    return f'{_s(value)} ({_s(min(runs))}-{_s(max(runs))})'


def render(results):
    """Markdown of :func:`collect`'s results."""
    syn = results.get('syn') or {}
    syn_s = syn.get('seconds')
    lines = ['# The default registration on this CPU', '',
             f'Machine: {results.get("machine", "")}', '',
             f'CPU flags: {results.get("cpu", "")}', '',
             f'Command: `{results.get("command", "")}`', '',
             'The quick start\'s pair (`data/example_moving.npz` to `data/atlas.npz`), the shipped '
             f'`models/vm2_atlas.h5`, the default refinement ({results["optimize"]} half-resolution steps '
             'with the default coarse and full-resolution ones). "register.py" is the whole command '
             'as a user runs it (start-up and tracing included), with a new compilation cache: a first '
             'run, which compiles the XLA kernels as the first run on a machine does, then '
             f'{results.get("repeats", 1)} later runs, which load them (`vxm_keras/compile_cache.py`), '
             'taken in turns across the settings: their median (range); "x SyN" is that median over '
             'the median of SyN\'s runs. The stages are a further '
             'process, with that cache, registering the pair twice through the library: the first '
             'pair (what a one-scan command pays) and the second (each further pair of a batch).', '',
             '| setting | oneDNN | register.py s | x SyN | register.py s, first run | start-up and load s | '
             + ' | '.join(STAGES) + ' | first pair s | second pair s | write s | peak GiB | NCC to first setting |',
             '|' + '---|' * (11 + len(STAGES))]
    for row in results['rows']:
        st, e2e = row['stages'], row['register_py']
        if 'error' in st:
            lines.append(f'| {row["setting"]} | error: {st["error"]} |')
            continue
        first, second = st['first'], st['second']
        # the worker's wall time less its registrations and writing: Python, imports, model, scans
        startup = st['wall'] - first['total'] - second['total'] - st['write']
        wall = e2e.get('wall')
        ratio = f'{wall / syn_s:.2f}' if wall and syn_s else 'n/a'
        first_run = (row.get('register_py_first') or {}).get('wall')
        lines.append(f'| {row["setting"]}: {row["label"]} | {st.get("onednn")} | {_spread(wall, e2e.get("runs"))} | '
                     f'{ratio} | {_s(first_run)} | {_s(startup)} | '
                     + ' | '.join(f'{_s(first.get(k), 2)} / {_s(second.get(k), 2)}' for k in STAGES)
                     + f' | {_s(first["total"])} | {_s(second["total"])} | {_s(st["write"], 2)} | '
                     f'{_s(st["maxrss_mib"] / 1024, 2)} | {_s(row.get("moved_ncc_to_first"), 5)} |')
    lines += ['', 'Stage cells: first pair / second pair, seconds.', '']
    if syn:
        if 'error' in syn:
            lines.append(f'ANTs SyN: {syn["error"]}')
        else:
            lines.append(f'ANTs SyN (antspyx defaults, `type_of_transform=\'SyN\'`) on the same pair: '
                         f'{_spread(syn_s, syn.get("runs"))} s, peak {_s(syn["maxrss_mib"] / 1024, 2)} GiB; '
                         'moved image NCC to '
                         f'the atlas {_s(syn.get("moved_ncc_to_fixed"), 4)}, ours (first setting) '
                         f'{_s(results["rows"][0]["stages"].get("moved_ncc_to_fixed"), 4)}.')
    else:
        lines.append('ANTs SyN: not run (--no-peers).')
    return '\n'.join(lines) + '\n'


def build_parser():
    p = argparse.ArgumentParser(prog='python -m vxm_keras.bench.cpu', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True, help='Markdown report (JSON results beside it, same stem)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing report')
    p.add_argument('--settings', nargs='+', choices=list(SETTINGS), default=list(SETTINGS),
                   help='kernel settings to measure (default: all)')
    p.add_argument('--optimize', type=int, default=20, help='half-resolution steps (register.py default: 20)')
    p.add_argument('--repeats', type=int, default=3,
                   help="later register.py runs of each setting and SyN runs; medians compared (default 3)")
    p.add_argument('--no-peers', dest='peers', action='store_false', help='skip ANTs SyN')
    return p


def run(args):
    import importlib.util

    from .run import write_text
    stem = os.path.splitext(args.out)[0]
    for path in (args.out, stem + '.json'):
        if os.path.exists(path) and not args.overwrite:
            raise UserError(f'{path}: exists (use --overwrite to replace it)')
    if args.optimize < 0:
        raise UserError(f'--optimize must be >= 0, got {args.optimize}')
    if args.repeats < 1:
        raise UserError(f'--repeats must be >= 1, got {args.repeats}')
    if args.peers and importlib.util.find_spec('ants') is None:
        raise UserError("ANTs SyN needs antspyx: pip install -e '.[peers]' (or --no-peers)")
    with tempfile.TemporaryDirectory() as tmp:
        results = collect(args.settings, args.peers, args.optimize, tmp, args.repeats)
    from .report import machine_description
    results.update(machine=machine_description(), cpu=cpu_flags(),
                   command=shlex.join(['python', '-m', 'vxm_keras.bench.cpu', *args.argv]))
    text = render(results)
    print(text)
    write_text(stem + '.json', json.dumps(results, indent=1) + '\n')
    write_text(args.out, text)
    return 0


def main(argv=None):
    from ..cli import execute
    args = build_parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return execute(run, args)


if __name__ == '__main__':
    sys.exit(main())
