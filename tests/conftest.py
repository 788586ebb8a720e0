"""Test-session settings.

Every test runs with one intra-op thread (torch and the BLAS under numpy/scipy): the tests are
many small computations, where threads only add synchronisation, and on a shared or loaded
2-core machine spinning OpenMP threads made single tests 30x slower (measured: one network
Monte Carlo case took 1.5 s with one thread and 50 s with the default, under a load average of 5).
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
