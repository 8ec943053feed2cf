"""Fit the anchors' aspect ratios and scales to the training boxes; write the `anchors:` section.

    retinanet fit-anchors --config configs/rsna.yaml [--out anchors.yaml] [--num-ratios 3] [--num-scales 3]

k-medians with the distance 1 - IoU between centred box and anchor shapes, at the network input
size, over the config's levels and sizes (retinanet/analysis/anchor_fitting.py). Reports the share of
training boxes that have an anchor at IoU >= anchors.positive_iou before and after, and writes
the config's `anchors:` section with the fitted values (to stdout, or to --out with the report
on stdout) for pasting into a config. It needs the labels only, not the images. Exit code 2 on a
bad config or unreadable labels.
"""

from __future__ import annotations

import sys

from retinanet.commands.common import add_config_arguments, add_progress_argument


def add_arguments(parser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--out", help="write the anchors section here (default: stdout, the report on stderr)")
    parser.add_argument("--num-ratios", type=int, help="aspect ratios to fit (default: as many as the config has)")
    parser.add_argument("--num-scales", type=int, help="scales to fit (default: as many as the config has)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the k-medians starts (default 0)")
    add_progress_argument(parser)


def run(args, parser) -> int:
    for name in ("num_ratios", "num_scales"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    from retinanet.config import ConfigError, load_config

    config = load_config(args.config, args.set)  # before TensorFlow loads: a typo answers at once
    from retinanet.analysis.anchor_fitting import anchors_yaml, fit_anchors, format_fit_report
    from retinanet.data.split import prepare_split
    from retinanet.runtime.safe_writes import write_text_atomically
    from retinanet.synthetic.rsna_layout import ensure_synthetic_data

    ensure_synthetic_data(config, progress=not args.no_progress)  # the demo's data, on its first run
    records = prepare_split(config, progress=not args.no_progress, require_images=False).train  # boxes only
    if not any(len(record.boxes) for record in records):
        raise ConfigError(f"{args.config}: the training split holds no boxes to fit anchors to")
    fit = fit_anchors(records, config, num_ratios=args.num_ratios, num_scales=args.num_scales, seed=args.seed)
    text = anchors_yaml(fit, source=f"{args.config} at {config.preprocessing.image_size[0]}x"
                                    f"{config.preprocessing.image_size[1]} px")
    report = format_fit_report(fit)
    if args.out:
        write_text_atomically(args.out, text)
        print(report)
        print(f"anchors section: {args.out}")
    else:
        print(report, file=sys.stderr)
        print(text, end="")
    return 0
