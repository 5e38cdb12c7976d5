"""Write a BagNet-q file convlens's ``bagnet`` method reads in one pass: ``<stem>.onnx``, ``<stem>.pt`` and the
card ``<stem>.json`` declaring ``"bagnet": {"patch": q, "stride": 8, "layer": "logit_map"}``.

The net is :mod:`convlens_plugins.training.bagnet_net`'s narrow BagNet (Brendel & Bethge 2019) with seeded
random weights: nothing can be downloaded here. To serve a trained BagNet instead, build the same module, load
your weights into it (the paper's ``fc`` weight, reshaped to K x C x 1 x 1, is ``logit_map``'s), and pass it to
``write_bagnet``; any other architecture works too if each position of one of its layers is the logits of one
q x q patch and the card names that layer.

Run: ``.venv/bin/python examples/write_bagnet.py [--patch 17] [--classes 10] [--width 8] [--seed 0] models``
(about half a minute on 2 cores, mostly the ONNX export), then pick the model in the browser.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from convlens_plugins.training.bagnet_net import RECEPTIVE_FIELDS, bagnet, write_bagnet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a models folder convlens serves (e.g. models)")
    parser.add_argument("--patch", type=int, default=17, choices=sorted(RECEPTIVE_FIELDS))
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--width", type=int, default=8, help="channels of the stem (the paper's: 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stem", default=None, help="file name without suffix (default bagnet<q>)")
    args = parser.parse_args(argv)
    if args.classes < 1 or args.width < 1:
        parser.error("--classes and --width must be at least 1")
    net = bagnet(args.patch, args.classes, args.width, seed=args.seed)
    for path in write_bagnet(args.folder, args.stem or f"bagnet{args.patch}", net, args.patch):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
