"""Export a trained run: a TensorFlow SavedModel, a TFLite model or an ONNX model.

    retinanet export --run-dir runs/demo-... --output exported/                  # SavedModel
    retinanet export --run-dir runs/demo-... --output exported/ --format tflite  # exported/model.tflite
    retinanet export --run-dir runs/demo-... --output exported/ --format onnx    # exported/model.onnx
    retinanet export --checkpoint runs/x/best.weights.h5 --output exported/ [--config CFG]
    retinanet export --run-dir runs/cv-demo --output exported/   # one SavedModel of every fold

The SavedModel loads with tf.saved_model.load alone and takes images of any size (one, or a
batch with per-image sizes, grey or RGB); TFLite and ONNX hold the network only, at the fixed
input size, for the caller to letterbox into and to post-process (see retinanet/serve/export.py and
retinanet/serve/export_formats.py). ONNX needs the `export` extra (pip install "rsna-retinanet[export]").
Several --run-dir (or a cross-validation directory) give one SavedModel holding every model,
whose boxes it fuses as `retinanet infer` does; TFLite and ONNX take one run only.
"""

from __future__ import annotations

from retinanet.commands.common import add_source_arguments, check_source_arguments
from retinanet.serve.export_formats import EXPORT_FORMATS


def add_arguments(parser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--output", required=True, help="directory to write (the SavedModel, or model.<format>)")
    parser.add_argument("--format", choices=list(EXPORT_FORMATS), default="savedmodel",
                        help="what to write (default: savedmodel)")
    parser.add_argument("--threshold", type=float, help="score threshold baked in (default: the run's chosen one)")


def run(args, parser) -> int:
    check_source_arguments(parser, args)
    import json

    from retinanet.serve.export_formats import export_run
    from retinanet.run_directory import threshold_line

    info = export_run(output_dir=args.output, export_format=args.format, checkpoint=args.checkpoint,
                      run_dir=args.run_dir, config_path=args.config, threshold=args.threshold)
    source = info.pop("score_threshold_source")
    print(json.dumps(info, indent=2))
    print(threshold_line(info["score_threshold"], source))
    print(f"{args.format} model written to {info['model']}")
    return 0
