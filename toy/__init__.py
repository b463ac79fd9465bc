"""The toy experiment of Sec. 3.1 (Fig. 1c, Fig. 2): MNIST '2'/'8' with added shapes, a small CNN, HGR per layer
and during RIB. Its own package: nothing in the WSSS pipeline imports it.

    toy/mnist.py       MNIST IDX reading (and an optional download)
    toy/shapes.py      shapes painted on digits, region masks, gradient maps and the high gradient ratio (HGR)
    toy/net.py         the 5-conv + FC classifier
    toy/experiment.py  the experiment itself (scripts/toy_experiment.py runs it)
"""
