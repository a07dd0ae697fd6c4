"""The accepted values and defaults of the deploy settings, in one place that imports nothing heavy: the command line
lists them in ``--help`` and checks them before torch is loaded; the library checks the same values."""

MODES = ("eager", "compile", "cuda-graph")         # how a profile runs each sub-network
DTYPES = ("bf16", "bfloat16", "float16", "float32", "fp16", "fp32")
BACKENDS = ("auto", "triton", "ext", "reference")  # kernel backend ('auto': the dispatcher's choice)
FORMATS = ("onnx", "pt2", "aoti")                  # export formats (aoti: an AOTInductor package)
SUFFIX = {"onnx": ".onnx", "pt2": ".pt2", "aoti": ".pt2"}  # what the file name of each format must end with
CONFIDENCES = ("max_softmax", "margin")            # a cascade stage's confidence measure
STAGE_POOLS = ("all", "pareto")                    # cascade stages from every sub-network, or the calibration front


def default_profile_file() -> str:
    """Where latency profiles are kept unless --profile says otherwise: $XDG_CACHE_HOME/supervit/profiles.json."""
    import os

    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "supervit", "profiles.json")
