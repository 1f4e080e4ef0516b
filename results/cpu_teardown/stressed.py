"""Runs a Python script (argv[1], with the rest of argv) with a switch interval of 10 s: the main thread then hands the
GIL to a waiting thread only where it blocks, which makes the exit race of `run_worker.sh` frequent enough to count."""

import os
import runpy
import sys

sys.setswitchinterval(10)
sys.argv = sys.argv[1:]
sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))  # as `python SCRIPT` puts the script's folder first
runpy.run_path(sys.argv[0], run_name="__main__")
