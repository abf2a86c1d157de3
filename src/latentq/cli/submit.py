"""``latentq submit``: latent files -> batches of jobs, straight through Redis or over the HTTP API;
with ``--wait``, a progress bar and the results saved."""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["cmd_submit"]


class _DirectBatches:
    """``latentq submit`` straight through Redis: Client.submit_many and Client.batch_info."""

    def __init__(self) -> None:
        from ..producer import Client

        self.client = Client()

    def submit(self, samples: list, model: str, output_format: str) -> list[tuple[str, list[str]]]:
        """(batch id, job ids) of each batch, together covering ``samples`` in order."""
        limit = self.client.settings.limits.max_batch_submit
        out = []
        for start in range(0, len(samples), limit):
            jobs = self.client.submit_many(samples[start : start + limit], model=model, output_format=output_format)
            out.append((str(jobs[0].batch_id), [job.id for job in jobs]))
        return out

    def status(self, batch_id: str) -> dict:
        return self.client.batch_info(batch_id)

    def read(self, result: dict) -> bytes:
        from ..core.request import ResultObject

        return self.client.read_result(ResultObject.from_dict(result))


class _HttpBatches:
    """``latentq submit --api URL``: POST /v1/batches and GET /v1/batches/{id}."""

    def __init__(self, api: str, api_key: str | None = None) -> None:
        import httpx

        from ..producer.http import auth_headers

        self.http = httpx.Client(base_url=api, timeout=60, headers=auth_headers(api_key))

    def submit(self, samples: list, model: str, output_format: str) -> list[tuple[str, list[str]]]:
        import itertools

        import torch

        from ..core.wire import latent_to_bytes
        from ..producer.http import _raise_for

        out = []
        # An HTTP batch is one stacked tensor: consecutive samples of one shape and dtype go together.
        for _, group in itertools.groupby(samples, key=lambda t: (tuple(t.shape), t.dtype)):
            response = self.http.post("/v1/batches", params={"model": model, "output_format": output_format},
                                      content=latent_to_bytes(torch.stack(list(group))))  # fmt: skip
            _raise_for(response)
            body = response.json()
            out.append((body["id"], body["job_ids"]))
        return out

    def status(self, batch_id: str) -> dict:
        from ..producer.http import _raise_for

        response = self.http.get(f"/v1/batches/{batch_id}")
        _raise_for(response)
        return response.json()

    def read(self, result: dict) -> bytes:
        from ..producer.http import _raise_for, result_request

        response = self.http.send(result_request(self.http, result["url"]), follow_redirects=True)
        _raise_for(response)
        return response.content


def cmd_submit(args: argparse.Namespace) -> int:
    from safetensors.torch import load_file
    from tqdm import tqdm

    from ..core.request import JobStatus

    labels, samples = [], []
    for path in args.files:
        for name, tensor in load_file(str(path)).items():
            batch = tensor if tensor.ndim == 4 and tensor.shape[0] > 1 else tensor.reshape(1, *tensor.shape[-3:])
            for index, sample in enumerate(batch.unbind(0)):
                labels.append(f"{path.stem}-{name}-{index}")
                samples.append(sample)
    batches: _DirectBatches | _HttpBatches = _HttpBatches(args.api, args.api_key) if args.api else _DirectBatches()
    submitted = batches.submit(samples, args.model, args.output_format)
    label_of: dict[str, str] = {}
    job_ids = [job_id for _, ids in submitted for job_id in ids]
    for label, job_id in zip(labels, job_ids):
        label_of[job_id] = label
        print(f"{label}\t{job_id}", flush=True)
    for batch_id, ids in submitted:
        print(f"batch {batch_id}: {len(ids)} job(s)", file=sys.stderr)
    if not args.wait:
        return 0
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)

    failed = 0

    def report(job: dict) -> None:
        nonlocal failed
        label = label_of[job["id"]]
        if job["status"] != JobStatus.FINISHED.value:
            failed += 1
            tqdm.write(f"{label}\t{job['id']}\t{job['status']}: {job.get('error') or ''}", file=sys.stderr)
            return
        results = job.get("results") or []
        for index, result in enumerate(results):
            line = f"{label}\t{job['id']}\t{result['url'] or result['key']}"  # no URL: the deployment has no API
            if args.out:
                ext = result["key"].rsplit(".", 1)[-1]
                target = args.out / (f"{label}.{index}.{ext}" if len(results) > 1 else f"{label}.{ext}")
                target.write_bytes(batches.read(result))
                line += f"\t{target}"
            tqdm.write(line)

    # Poll each batch's status (one request per batch, not per job); the bar advances as jobs end.
    pending = {batch_id: set(ids) for batch_id, ids in submitted}
    deadline = time.monotonic() + args.timeout
    with tqdm(total=len(job_ids), desc="decoding", unit="job", file=sys.stderr) as bar:
        while pending:
            for batch_id in list(pending):
                body = batches.status(batch_id)
                for job in body["jobs"]:
                    if job["id"] in pending[batch_id] and JobStatus(job["status"]).is_final:
                        pending[batch_id].discard(job["id"])
                        report(job)
                        bar.update(1)
                if body["done"]:  # jobs still missing are older than the result TTL
                    for job_id in pending.pop(batch_id):
                        report({"id": job_id, "status": "unknown", "error": "its record expired"})
                        bar.update(1)
            if pending and time.monotonic() >= deadline:
                for job_id in sorted(set().union(*pending.values())):
                    report({"id": job_id, "status": "timeout", "error": f"not done after {args.timeout:g} s"})
                break
            if pending:
                time.sleep(0.2)
    return 1 if failed else 0
