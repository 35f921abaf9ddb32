"""API/store speed against baselines measured in the same run (numbers are noisy on a shared machine):

- upload: a 64 MB file through the SDK (multipart, streamed to disk, fsynced, row inserted) vs writing
  and fsyncing the same bytes straight to the same disk;
- request overhead: files.retrieve / jobs.retrieve / events list (auth + SQLite read + JSON) vs GET /health;
- concurrent fine-tune uploads (validated on upload) from 8 threads, files per second.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def timed(fn, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="tunery-bench-api-"))
    os.environ["TUNERY_HOME"] = str(home)
    import httpx

    from test_api_support import chat_jsonl, start_server
    from tunery.settings import Settings

    srv = start_server(Settings.from_env())
    c = srv.client()
    try:
        data = os.urandom(64 * 1024 * 1024)
        t = time.perf_counter()
        with open(home / "baseline.bin", "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        base = time.perf_counter() - t
        t = time.perf_counter()
        c.files.create(file=("big.bin", io.BytesIO(data)), purpose="user_data")
        up = time.perf_counter() - t
        print(f"upload 64 MB: {64 / up:.0f} MB/s via the API vs {64 / base:.0f} MB/s raw write+fsync "
              f"(ratio {base / up:.2f} of raw)")

        fid = c.files.create(file=("t.jsonl", io.BytesIO(chat_jsonl(50))), purpose="fine-tune").id
        job = c.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=fid)
        with httpx.Client(base_url=srv.url) as h:
            health = timed(lambda: h.get("/health"), 200)
            for name, fn in [("files.retrieve", lambda: h.get(f"/v1/files/{fid}")),
                             ("jobs.retrieve", lambda: h.get(f"/v1/fine_tuning/jobs/{job.id}")),
                             ("jobs.list_events", lambda: h.get(f"/v1/fine_tuning/jobs/{job.id}/events")),
                             ("files.list", lambda: h.get("/v1/files?limit=20"))]:
                med = timed(fn, 200)
                print(f"{name}: median {med * 1000:.1f} ms vs /health {health * 1000:.1f} ms "
                      f"(x{med / health:.1f})")

        body = chat_jsonl(200)
        n = 48
        t = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: c.files.create(file=(f"{i}.jsonl", io.BytesIO(body)), purpose="fine-tune"),
                          range(n)))
        dt = time.perf_counter() - t
        print(f"concurrent validated uploads (200 examples each, 8 threads): {n / dt:.1f} files/s; "
              f"{json.dumps({'files': len(c.files.list().data)})}")
    finally:
        srv.stop()
        import shutil

        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
