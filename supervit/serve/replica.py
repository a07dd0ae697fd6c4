"""One server replica: the model (one copy of the weights), its request queue, and the HTTP routes.

Routes::

    POST /  (or /predict)   {"image": ...} or {"tensor": ...}  -> top-5 classes, the point used, queue/compute ms
    GET  /info              the operating points, the policy's settings and state, counters, resident memory
    GET  /healthz           200 once the model is loaded

The operating point is an argument of the forward (``model(x, img_size=..., keep_ratio=...)``): switching points
reloads nothing and copies no weights.
"""
from __future__ import annotations

import resource
import time

from starlette.requests import Request
from starlette.responses import JSONResponse

from .batcher import Batcher, now_ms
from .errors import RequestError
from .inputs import InputSpec, parse_request
from .policy import Calibration, LatencyTable, Policy

TOP_K = 5


class SuperViTReplica:
    """The Ray Serve deployment class (``supervit.serve.server`` wraps it with ``serve.deployment``).

    Args:
        config: the plain settings ``supervit.serve.app.replica_config`` builds (model source, latency table,
            accuracies, policy, input and limits).
    """

    def __init__(self, config: dict):
        import torch

        from supervit import deploy
        from supervit.models import Subnet

        torch.set_num_threads(config["threads"])
        torch.manual_seed(config["seed"])  # models without a checkpoint get the same random weights everywhere
        source = deploy.load_source(**config["source"])
        self.model = source.model.eval()
        self.config = config
        latency = {Subnet.parse(s): {int(b): ms for b, ms in by_batch.items()}
                   for s, by_batch in config["latency_ms"].items()}
        accuracy = {Subnet.parse(s): a for s, a in config["accuracy"].items()}
        self.accuracy_known = config["accuracy_known"]
        budget = config["slo_ms"] - config["transit_ms"]
        self.policy = Policy(LatencyTable(latency), accuracy, margin=config["margin"],
                             calibration=Calibration(config["quantile"], config["window"]),
                             budget_ms=budget if config["rate_guard"] else None)
        self.batcher = Batcher(self.policy, self._run_batch, budget)
        self.spec = InputSpec(**config["input"])
        self.labels = _labels(self.model.num_classes)
        self.batcher.in_worker(self._warm_up)
        self.started = time.time()

    def _warm_up(self):
        """One forward of every point at batch 1 and at the largest batch (first calls allocate and are slow)."""
        import torch

        x = torch.zeros(self.spec.channels, self.spec.side, self.spec.side)
        for subnet in self.policy.points:
            for batch in (1, self.policy.max_batch):
                self._run_batch([x] * batch, subnet)

    def _run_batch(self, inputs, subnet):
        """(one top-k answer per input, forward ms) of ``inputs`` ([C, S, S] each) on ``subnet``; worker thread."""
        import torch

        with torch.inference_mode():
            x = torch.stack(inputs)  # [B, C, S, S]
            start = time.perf_counter()
            logits = self.model(x, img_size=subnet.img_size, keep_ratio=subnet.keep_ratio)  # [B, K]
            compute_ms = (time.perf_counter() - start) * 1e3
            top = logits.float().softmax(dim=-1).topk(min(TOP_K, logits.shape[-1]), dim=-1)
        outputs = [[{"class": int(c), **({"label": self.labels[int(c)]} if self.labels else {}),
                     "probability": round(float(p), 6)} for c, p in zip(classes, probs)]
                   for classes, probs in zip(top.indices.tolist(), top.values.tolist())]
        return outputs, compute_ms

    async def __call__(self, request: Request):
        arrival = now_ms()
        path = request.url.path.rstrip("/") or "/"
        try:
            if path in ("/", "/predict"):
                if request.method != "POST":
                    raise RequestError(405, f"{path} takes POST with a JSON body; GET /info describes the server")
                return JSONResponse(await self._predict(request, arrival))
            if path in ("/info", "/healthz") and request.method == "GET":
                return JSONResponse(self.info() if path == "/info" else {"status": "ok"})
            raise RequestError(404, f"no route {request.method} {path}; use POST / (or /predict), GET /info, "
                                    "GET /healthz")
        except RequestError as err:
            headers = {"Retry-After": "1"} if err.status == 503 else None
            return JSONResponse({"error": err.message}, status_code=err.status, headers=headers)

    async def _predict(self, request: Request, arrival: float) -> dict:
        body = await _read_body(request, self.config["max_body_bytes"])
        x = parse_request(body, self.spec)
        output, batch, queue_ms = await self.batcher.submit(x, arrival)
        return {"top5": output, "subnet": str(batch.subnet),
                "expected_top1": self.policy.accuracy[batch.subnet] if self.accuracy_known else None,
                "queue_ms": round(queue_ms, 3), "compute_ms": round(batch.compute_ms, 3),
                "server_ms": round(now_ms() - arrival, 3),
                "batch": {"id": batch.id, "size": batch.size, "service_ms": round(batch.service_ms, 3),
                          "predicted_ms": round(batch.predicted_ms, 3)}}

    def info(self) -> dict:
        counters, policy = self.batcher.counters, self.policy
        calibration = policy.calibration
        return {"model": self.config["name"], "mode": self.config["mode"], "slo_ms": self.config["slo_ms"],
                "transit_ms": self.config["transit_ms"], "accuracy_table": self.config["accuracy_label"],
                "points": [{"subnet": str(s),
                            "expected_top1": self.policy.accuracy[s] if self.accuracy_known else None,
                            "latency_ms": {b: self.policy.table.ms(s, b) for b in self.policy.table.batches}}
                           for s in self.policy.points],
                "policy": {"margin": policy.margin, "scale": calibration.scale, "typical": calibration.typical,
                           "overhead_ms": calibration.overhead_ms, "quantile": calibration.quantile,
                           "max_batch": policy.max_batch, "rate_guard": policy.budget_ms is not None,
                           "arrival_rate": self.batcher.arrival_rate(now_ms())},
                "counters": {"answered": counters.answered, "rejected_early": counters.rejected_early,
                             "expired": counters.expired, "failed": counters.failed, "batches": counters.batches,
                             "switches": counters.switches, "by_subnet": dict(counters.by_subnet)},
                "queued": len(self.batcher.queue), "threads": self.config["threads"],
                "rss_mb": _resident_mb(),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
                "uptime_s": time.time() - self.started}

    def __del__(self):
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.shutdown()


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body; 413 when it is (or announces to be) larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    too_big = RequestError(413, f"the body is larger than the limit of {limit} bytes (--max-body-mb)")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_big
        except ValueError:
            raise RequestError(400, f"Content-Length must be an integer, got {declared!r}") from None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _resident_mb() -> float | None:
    """Resident memory of this process now, MiB (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/status") as handle:
            line = next(line for line in handle if line.startswith("VmRSS:"))
        return int(line.split()[1]) / 2**10
    except (OSError, StopIteration, ValueError):
        return None


def _labels(num_classes: int) -> list | None:
    """ImageNet-1k class names for 1000-class models (timm's bundled list), else None (classes are indices)."""
    if num_classes != 1000:
        return None
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(num_classes)]
