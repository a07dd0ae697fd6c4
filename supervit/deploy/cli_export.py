"""``python -m supervit.deploy export``: one sub-network to ONNX, a .pt2 program or an AOTInductor package."""
from __future__ import annotations

import sys

from .errors import DeployError
from .runners import FORMATS


def add_arguments(parser) -> None:
    source = parser.add_argument_group("model (one of)")
    source.add_argument("--model", default=None, help="registered model name (random weights), e.g. super_deit_s")
    source.add_argument("--checkpoint", default=None, help="our or a released checkpoint (read weights_only)")
    parser.add_argument("--img-size", type=int, required=True, help="image size of the sub-network, e.g. 224")
    parser.add_argument("--keep-ratio", type=float, required=True, help="keep rate of the sub-network, e.g. 0.5")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)} (aoti: AOTInductor package)")
    parser.add_argument("--out", required=True, help="output file (.onnx for onnx, .pt2 for pt2 and aoti)")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=int, default=None, help="a fixed batch size")
    batch.add_argument("--dynamic-batch", action="store_true", help="any batch size (the default)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="side of the input image (default: the model's largest size; resized inside)")
    parser.add_argument("--with-kept", action="store_true",
                        help="also output the kept token indices of each pruning block (for verification)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip running the export in its runtime against PyTorch eager")


def main(args) -> int:
    from tqdm import tqdm

    from . import export
    from .model_source import load_source
    from .subnet import check_subnet

    if (args.model is None) == (args.checkpoint is None):
        raise DeployError("give exactly one of --model NAME or --checkpoint CKPT")
    if args.format not in FORMATS:
        raise DeployError(f"--format must be one of {list(FORMATS)}, got {args.format!r}")
    model = load_source(args.checkpoint, args.model).model
    img_size, keep_ratio = check_subnet(model, args.img_size, args.keep_ratio)
    path, side = export.check_export_args(model, args.format, args.out, args.batch, args.input_size)
    steps = ["trace and translate to core ATen", f"write {args.format}"] + ([] if args.no_verify else ["verify"])
    with tqdm(total=len(steps), desc="export", unit="step", file=sys.stderr, leave=False) as bar:
        bar.set_postfix_str(steps[0])
        result = export.export_subnet(model, img_size, keep_ratio, args.format, path, args.batch, side,
                                      args.with_kept)
        bar.update(2)
        check = None
        if not args.no_verify:
            bar.set_postfix_str(steps[-1])
            check = export.parity(result, model)
            bar.update(1)
    batch = f"batch {result.batch}" if result.batch else "dynamic batch"
    print(f"wrote {result.path} ({result.format}, {result.size_bytes / 2**20:.1f} MiB): sub-network "
          f"({img_size}, {keep_ratio:g}), {batch}, input [B, {model.in_chans}, {side}, {side}], outputs "
          f"{', '.join(result.output_names)}; {result.seconds:.1f} s")
    if check is not None:
        kept = "" if check["kept_equal"] is None else f", kept indices equal: {check['kept_equal']}"
        print(f"verified in its runtime against PyTorch eager: max |logits diff| = {check['max_abs_diff']:.2e}{kept}")
    return 0
