"""What the benchmark scripts share: a side run in a fresh process with its BLAS threads pinned, and the
single-trial event schedule of the LSS/LSA benchmarks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def run_child(script, args, out, threads):
    """Run ``script --child ...`` in a fresh Python and read the JSON it left at ``out + '.json'``.

    BLAS threads are pinned as the fit nodes pin them: on a shared 2-core machine OpenBLAS's default of one
    thread per core, spinning against other processes, made single runs 5-10x slower.
    """
    env = {**os.environ, **{k: str(threads) for k in _THREAD_VARS}}
    subprocess.run([sys.executable, str(script), "--child", *map(str, args), "--out", out], check=True, env=env)
    return json.loads(Path(out + ".json").read_text())


def trial_events(n_vol, tr, n_trials, seed=60, duration=1.0, conditions=("faces", "houses")):
    """``n_trials`` evenly spread trials (jittered by up to 2 s) in two conditions, within a run of ``n_vol``
    volumes: an events table for single-trial models."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    span = n_vol * tr - 30.0
    onsets = 8.0 + np.arange(n_trials) * (span - 8.0) / n_trials + rng.uniform(0, 2.0, n_trials)
    kinds = rng.permutation(np.repeat(list(conditions), n_trials // 2))
    return pd.DataFrame({"onset": onsets, "duration": duration, "trial_type": kinds})


def child_arguments(parser, *extra):
    """The options a side's child process is called with (``--child WHAT --bold ... --design ... --out ...``
    and the script's ``extra`` ones)."""
    for name in ("--child", "--bold", "--design", "--out", *extra):
        parser.add_argument(name)
