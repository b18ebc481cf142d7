"""The synth stage's run: jobs -> cached generation -> QC -> generated shard, LIMO set, report."""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from stages.dedup import heldout_ngrams
from stages.ingest.shards import SCHEMA
from stages.synth import (
    CORPUS,
    GENERATED,
    HELDOUT,
    LIMO,
    MODELS,
    PROBLEMS,
    PROVENANCE,
    REPORT,
    SIGNALS,
    Params,
    jobs,
    limo,
    problems,
    qc,
)
from stages.synth.backends import (
    BackendError,
    Generation,
    Request,
    Retry,
    Sampling,
    content_hash,
)
from stages.synth.cache import GenerationCache, make_key
from stages.textstats.shards import ShardWriter, list_shards, write_manifest


def _counts(items) -> dict[str, int]:
    return dict(sorted(Counter(items).items()))


def fingerprint(params: Params, root: Path) -> str:
    """The model identity in every cache key, computed without loading the model (a fully
    cached run never loads one): a hash of the template code, of the model directory or file,
    or the endpoint's model name."""
    if params.backend == "templates":
        from stages.synth.backends.templates import code_fingerprint

        return code_fingerprint()
    if params.backend == "http":
        return f"http:{params.endpoint.model}"
    model = root / params.model
    if not model.exists():
        raise FileNotFoundError(f"synth.model {params.model}: not found; put the {params.backend} "
                                f"model there (see {MODELS}/README.md)")
    return f"{params.backend}:{content_hash(model)[:16]}"


def make_backend(params: Params, root: Path):
    """The configured backend (model backends imported only when chosen)."""
    sampling = Sampling(**params.sampling.model_dump())
    client = params.client
    if params.backend == "templates":
        from stages.synth.backends.templates import TemplatesBackend

        return TemplatesBackend()
    if params.backend == "hf":
        from stages.synth.backends.hf import HFBackend

        return HFBackend(root / params.model, sampling, batch_size=client.batch_size,
                         threads=client.threads)
    if params.backend == "gguf":
        from stages.synth.backends.gguf import GGUFBackend

        return GGUFBackend(root / params.model, sampling, threads=client.threads)
    from stages.synth.backends.http import HTTPBackend

    return HTTPBackend(params.endpoint.base_url, params.endpoint.model, sampling,
                       api=params.endpoint.api, api_key_env=client.api_key_env,
                       concurrency=client.concurrency, timeout_s=client.timeout_s,
                       retry=Retry(attempts=client.attempts, backoff_s=client.backoff_s))


def build_problems(params: Params, ctx, cache: GenerationCache) -> list[problems.Problem]:
    seed = ctx.base.seed
    out = [problems.generate(task, seed, i, params.max_steps)
           for task, n in sorted(params.problems.items()) if task != "code_trace"
           for i in range(n)]
    n_trace = params.problems.get("code_trace", 0)
    if n_trace:
        from stages.synth.problems import code_trace
        from stages.synth.sandbox import Limits

        limits = Limits(timeout_s=params.code_trace.timeout_s,
                        memory_mb=params.code_trace.memory_mb)
        docs = [(d, t) for d, _, t in jobs.corpus_docs(ctx.dep(CORPUS), "code")]
        out += code_trace.problems(docs, n_trace, seed, limits, memo=cache.memo,
                                   max_lines=params.code_trace.max_lines)
    return out


def build_jobs(params: Params, ctx, cache: GenerationCache
               ) -> tuple[list[jobs.Job], dict[str, int]]:
    model_backend = params.backend != "templates"
    items = build_problems(params, ctx, cache)
    work = jobs.problem_jobs(items, list(params.renderings), params.problem_prompt,
                             model_backend)
    seeds = jobs.select_seeds(ctx.dep(CORPUS), ctx.dep(SIGNALS), params.seeds.rule,
                              params.seeds.per_domain, ctx.base.seed)
    from stages.synth.backends.templates import DOCUMENT_TEMPLATES

    doc_jobs, skipped = jobs.document_jobs(seeds, params.prompts, params.seeds.max_chars,
                                           None if model_backend else DOCUMENT_TEMPLATES)
    return work + doc_jobs, skipped


def _request(job: jobs.Job, params: Params, model: str, seed: int) -> Request:
    """The request and its cache key: backend, model fingerprint, full prompt, sampling, seed.

    The templates backend renders the job's spec, so that spec is its prompt, and it ignores
    sampling (a sampling edit must not re-key template output).
    """
    rseed = jobs.seeded_hash("synth", seed, job.id) & 0x7FFFFFFF
    model_backend = params.backend != "templates"
    prompt = job.prompt if model_backend else json.dumps(job.spec, sort_keys=True)
    key = make_key({"kind": "generation", "backend": params.backend, "model": model,
                    "prompt": prompt, "seed": rseed,
                    "sampling": params.sampling.model_dump() if model_backend else {}})
    return Request(key=key, prompt=job.prompt, seed=rseed, job=job.spec)


LOCAL_MODELS = ("hf", "gguf")  # generation on the stage's executor (http keeps its own threads)


@functools.lru_cache(maxsize=1)
def _worker_backend(params_json: str, root: str):
    """The backend of a worker process, loaded once for all the chunks it is given."""
    return make_backend(Params.model_validate_json(params_json), Path(root))


def _generate_chunk(task: tuple[str, str, list[Request]]
                    ) -> tuple[list[tuple[Request, Generation | BackendError]], Counter]:
    """One executor task: a chunk of requests through the worker's backend, and its retries."""
    params_json, root, requests = task
    backend = _worker_backend(params_json, root)
    before = Counter(backend.retries)
    return list(backend.generate(requests)), backend.retries - before


def _results(misses: list[Request], params: Params, ctx, retries: Counter,
             chunk_done: Callable[[], None]) -> Iterator[tuple[Request, Generation | BackendError]]:
    """(request, result) for every miss as it arrives; `chunk_done()` after each chunk. Local
    models run on the stage's executor, a chunk per task (each worker loads the model once; a
    request's output depends on its own seed only, the hf backend's batches on its chunk only,
    so any worker count gives the same results); other backends in this process."""
    size = params.client.chunk
    chunks = [misses[start:start + size] for start in range(0, len(misses), size)]
    if params.backend not in LOCAL_MODELS:
        backend = make_backend(params, ctx.root)
        try:
            for chunk in chunks:
                yield from backend.generate(chunk)
                chunk_done()
        finally:
            backend.close()
            retries.update(backend.retries)
        return
    tasks = [(params.model_dump_json(), str(ctx.root), chunk) for chunk in chunks]
    try:
        with ctx.executor() as pool:
            for pairs, tried in pool.map(_generate_chunk, tasks):
                retries.update(tried)
                yield from pairs
                chunk_done()
    finally:
        if _worker_backend.cache_info().currsize:  # chunks generated in this process
            _worker_backend(*tasks[0][:2]).close()
            _worker_backend.cache_clear()


def generate(requests: list[Request], params: Params, cache: GenerationCache,
             ctx) -> tuple[dict[str, dict], dict[str, BackendError], Counter, int]:
    """Every request's record, from the cache or the backend, which is loaded only if some
    request is missing and asked only for those (each result is cached as it arrives, the
    remote cache updated after each chunk). Returns (records, failures, retries per reason,
    backend calls)."""
    records: dict[str, dict] = {}
    misses: list[Request] = []
    for r in requests:
        hit = cache.get(r.key)
        if hit is None:
            misses.append(r)
        else:
            records[r.key] = hit
    ctx.log.info("synth: %d of %d generations cached, %d to generate with %s", len(records),
                 len(requests), len(misses), params.backend)
    failures: dict[str, BackendError] = {}
    retries: Counter = Counter()
    if not misses:
        return records, failures, retries, 0
    results = _results(misses, params, ctx, retries, cache.flush)
    try:
        for request, result in ctx.progress(results, len(misses), "synth generate"):
            if isinstance(result, BackendError):
                failures[request.key] = result
                continue
            record = {"text": result.text, "finish_reason": result.finish_reason,
                      "prompt_tokens": result.prompt_tokens,
                      "completion_tokens": result.completion_tokens}
            cache.put(request.key, record)
            records[request.key] = record
    finally:
        results.close()  # the backend, or the workers, released before the final upload
        cache.flush()
    return records, failures, retries, len(misses)


def document_text(job: jobs.Job, text: str, model_backend: bool) -> str:
    """A problem answered by a model becomes question + solution; everything else is as made."""
    if model_backend and job.problem is not None:
        return f"{job.problem.question}\n\n{text.strip()}\n"
    return text


def _doc_id(key: str) -> str:
    return "synth-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def _write_generated(path: Path, corpus: Path, rows: list[dict[str, Any]]) -> int:
    shards = list_shards(corpus)
    base = pq.read_schema(shards[0]) if shards else SCHEMA.append(pa.field("weight", pa.float64()))
    fields = list(base)
    schema = pa.schema(fields + [pa.field(n, pa.string()) for n in PROVENANCE])
    path.mkdir(parents=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    with ShardWriter(path / "part-00000.parquet", schema) as writer:
        writer.write(table)
    write_manifest(path, [("part-00000.parquet", table.num_rows)], schema.names)
    return table.num_rows


def run(params: Params, ctx) -> dict:
    runtime = ctx.runtime
    cache = GenerationCache(ctx.root / runtime.synth_cache, runtime.synth_cache_url,
                            runtime.s3_endpoint_url)
    model = fingerprint(params, ctx.root)
    work, skipped = build_jobs(params, ctx, cache)
    sandbox_runs = cache.misses  # code-trace sandbox runs (memo misses) so far
    requests = [_request(j, params, model, ctx.base.seed) for j in work]
    records, failures, retries, calls = generate(requests, params, cache, ctx)
    cache.flush()  # also shares what this run found only in the local cache
    failed = len(failures)
    if work and failed / len(work) > params.max_failed_fraction:
        reasons = _counts(e.reason for e in failures.values())
        raise RuntimeError(
            f"synth: {failed} of {len(work)} generations failed ({reasons}), above "
            f"synth.max_failed_fraction={params.max_failed_fraction}; the {len(records)} that "
            "succeeded are cached, so a re-run asks the backend only for the failed ones")
    model_backend = params.backend != "templates"
    done = [(j, r) for j, r in zip(work, requests, strict=True) if r.key in records]
    texts = [document_text(j, records[r.key]["text"], model_backend) for j, r in done]
    done_jobs = [j for j, _ in done]
    reasons = qc.check(
        done_jobs, texts, (t for _, _, t in jobs.corpus_docs(ctx.dep(CORPUS))),
        heldout_ngrams(list_shards(ctx.dep(HELDOUT)), ctx.section("dedup").decontam_ngram),
        min_chars=params.qc.min_chars, groups=params.qc.rules,
        signal_params=ctx.section("signals"), filter_params=ctx.section("filter"),
        dedup_params=ctx.section("dedup"),
        seed=ctx.base.seed)
    accepted = reasons == ""

    rows = [{"doc_id": _doc_id(r.key), "source": f"synth-{params.backend}", "domain": j.domain,
             "path": j.id, "text": t, "n_chars": len(t), "weight": 1.0, "origin": "synthetic",
             "backend": params.backend, "model": model, "template": j.template,
             "seed_doc_id": j.seed_doc_id}
            for (j, r), t, ok in zip(done, texts, accepted, strict=True) if ok]
    _write_generated(ctx.out(GENERATED), ctx.dep(CORPUS), rows)
    ctx.out(PROBLEMS).write_text("".join(  # what every accepted answer is checked against
        json.dumps({"doc_id": _doc_id(r.key), "template": j.template,
                    "problem": j.problem.to_json()}, sort_keys=True, ensure_ascii=False) + "\n"
        for (j, r), ok in zip(done, accepted, strict=True) if ok and j.problem is not None))

    solved = [(j, limo.split_response(j, records[r.key]["text"]) if not model_backend
               else records[r.key]["text"].strip())
              for (j, r), ok in zip(done, accepted, strict=True) if ok and j.problem is not None]
    train, held, limo_counts = limo.select(
        solved, size=params.limo.size, min_difficulty=params.limo.min_difficulty,
        prefer=params.limo.prefer, eval_fraction=params.limo.eval_fraction, seed=ctx.base.seed,
        backend=params.backend, model=model)
    limo_dir = ctx.out(LIMO)
    limo_dir.mkdir(parents=True)
    for name, records_ in (("train", train), ("eval", held)):
        (limo_dir / f"{name}.jsonl").write_text(
            "".join(json.dumps(x, sort_keys=True, ensure_ascii=False) + "\n" for x in records_))

    failed_jobs = sorted(j.id for j, r in zip(work, requests, strict=True) if r.key in failures)
    report = _report(params, done, texts, reasons, failures, failed_jobs, work, skipped,
                     limo_counts, model)
    ctx.out(REPORT).write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False)
                               + "\n")
    tokens = sum(int(records[r.key]["completion_tokens"]) for _, r in done)
    ctx.log.info("synth: %d jobs, %d generated, %d accepted, %d failed; LIMO %d + %d",
                 len(work), len(done), int(accepted.sum()), failed, len(train), len(held))
    return {
        "backend": params.backend,
        "model": model,
        "jobs": len(work),
        "generated": len(done),
        "accepted": int(accepted.sum()),
        "rejected": int((~accepted).sum()),
        "failed": failed,
        "acceptance_rate": round(float(accepted.mean()), 6) if len(done) else 0.0,
        "cache_hits": len(work) - calls,
        "backend_calls": calls,
        "sandbox_runs": sandbox_runs,
        "cache_downloads": cache.downloaded,
        "cache_uploads": cache.uploaded,
        "tokens_generated": tokens,
        "accepted_chars": sum(r["n_chars"] for r in rows),
        "limo_train": len(train),
        "limo_eval": len(held),
        "retries_by_reason": dict(sorted(retries.items())),
        "failed_by_reason": _counts(e.reason for e in failures.values()),
        "rejected_by_reason": _counts(reasons[~accepted]),
        "accepted_by_template": _counts(j.template for (j, _), ok in zip(done, accepted,
                                                                          strict=True) if ok),
    }


def _report(params: Params, done, texts, reasons, failures, failed_jobs, work, skipped,
            limo_counts, model: str) -> dict[str, Any]:
    """Deterministic report: counts per template and reason, samples of each, the LIMO rule."""
    by_template: dict[str, Counter] = {}
    samples: dict[str, list] = {}
    rejected: dict[str, list] = {}
    for (job, _), text, reason in zip(done, texts, reasons, strict=True):
        by_template.setdefault(job.template, Counter())["accepted" if not reason
                                                         else "rejected"] += 1
        bucket = samples.setdefault(job.template, []) if not reason else rejected.setdefault(
            reason, [])
        if len(bucket) < params.samples:
            bucket.append({"job": job.id, "template": job.template, "text": text[:1200],
                           **({"reason": reason} if reason else {})})
    return {
        "backend": params.backend,
        "model": model,
        "jobs_by_template": _counts(j.template for j in work),
        "by_template": {t: dict(sorted(c.items())) for t, c in sorted(by_template.items())},
        "rejected_by_reason": _counts(r for r in reasons if r),
        "failed_by_reason": _counts(e.reason for e in failures.values()),
        "failed_jobs": failed_jobs,
        "skipped_document_templates": skipped,
        "samples_accepted": samples,
        "samples_rejected": rejected,
        "limo": {"rule": limo.RULE, "size": params.limo.size,
                 "min_difficulty": params.limo.min_difficulty, "prefer": params.limo.prefer,
                 **limo_counts},
    }
