"""Toy experiment of Sec. 3.1 (Fig. 1c, Fig. 2) of the RIB paper; the code lives in toy/experiment.py.

    python scripts/toy_experiment.py --mnist_dir ../shared/data/mnist --out_dir toy_out
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toy.experiment import cli  # noqa: E402

if __name__ == "__main__":
    cli()
