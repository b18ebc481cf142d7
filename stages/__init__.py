"""Pipeline stages as plain Python: each module has `Params` and `run(params, ctx)`."""

import os

# Arrow's buffers from the system allocator, not its bundled jemalloc: jemalloc keeps freed
# pages for reuse, so a stage streaming shards grew with the corpus (ingest at 16x: +18% peak
# memory with jemalloc, +11% with this) and started 25 MB higher. Set before pyarrow is first
# imported (stages and their worker processes import this package first); the environment wins.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
