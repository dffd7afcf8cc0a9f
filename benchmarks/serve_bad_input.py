"""The bad-input set against a running `skulens serve`: every case must get a 4xx with a clear message,
and the server must still be healthy (and still predict) afterwards.

    python benchmarks/serve_bad_input.py --model runs/bench5/bundle [--photo good.jpg]

Cases: corrupt, truncated and 0-byte files, a real decompression bomb (a 300 KB PNG that decodes to
2.5 billion pixels), a real 20000x20000 PNG, non-images with image names and types, an oversized
upload, wrong content types, missing / wrong API keys, and attempts to make the server read a path or
fetch a URL. Each image case is sent to /v1/predict, /v1/support/ask and /v1/inventory/intake.
"""

from __future__ import annotations

import argparse
import json
import shlex
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _results import append_section
from _serve_common import Server, find_photos


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def real_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height, all black, streamed through zlib (never held decoded)."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def image_cases(good: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {
        "corrupt JPEG": ("corrupt.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 64, "image/jpeg"),
        "truncated JPEG": ("truncated.jpg", good[: len(good) // 3], "image/jpeg"),
        "0-byte file": ("empty.jpg", b"", "image/jpeg"),
        "decompression bomb (50000x50000 PNG)": ("bomb.png", real_png(50_000, 50_000), "image/png"),
        "20000x20000 pixels (PNG)": ("huge.png", real_png(20_000, 20_000), "image/png"),
        "text file named .jpg": ("photo.jpg", b"just some text, not a photo\n" * 50, "image/jpeg"),
        "HTML named .png": ("x.png", b"<html><script>alert(1)</script></html>", "image/png"),
        "PDF named .jpg": ("scan.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "image/jpeg"),
        "oversized upload (25 MB)": ("big.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 25_000_000, "image/jpeg"),
    }


def run_cases(server: Server, good: bytes) -> list[dict]:
    results = []
    auth = {"X-API-Key": server.key}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        def record(case: str, endpoint: str, r: httpx.Response) -> None:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text[:200]
            ok = 400 <= r.status_code < 500 and isinstance(detail, str) and len(detail) > 5
            results.append({"case": case, "endpoint": endpoint, "status": r.status_code, "detail": detail, "ok": ok})

        for case, (name, data, ctype) in image_cases(good).items():
            record(case, "/v1/predict", c.post("/v1/predict", files={"image": (name, data, ctype)}))
            record(case, "/v1/support/ask", c.post("/v1/support/ask", files={"image": (name, data, ctype)},
                                                   data={"question": "Where is it from?"}))
            record(case, "/v1/inventory/intake", c.post("/v1/inventory/intake", headers=auth,
                                                        files=[("images", (name, data, ctype))]))
        record("wrong content type (JSON body)", "/v1/predict", c.post("/v1/predict", json={"image": "a.jpg"}))
        record("wrong content type (raw image body)", "/v1/predict",
               c.post("/v1/predict", content=good, headers={"content-type": "image/jpeg"}))
        record("wrong content type (form, no file)", "/v1/predict", c.post("/v1/predict", data={"image": "x"}))
        intake = [("images", ("ok.jpg", good, "image/jpeg"))]
        record("missing API key", "/v1/inventory/intake", c.post("/v1/inventory/intake", files=intake))
        record("wrong API key", "/v1/inventory/intake",
               c.post("/v1/inventory/intake", files=intake, headers={"X-API-Key": "not-the-key"}))
        record("wrong bearer token", "/v1/inventory/intake",
               c.post("/v1/inventory/intake", files=intake, headers={"Authorization": "Bearer nope-nope"}))
        record("server path instead of a file", "/v1/predict", c.post("/v1/predict", data={"image": "/etc/passwd"}))
        record("URL instead of a file", "/v1/predict",
               c.post("/v1/predict", data={"image": "http://169.254.169.254/latest/meta-data/"}))
        record("path traversal in a product id", "/v1/products/{id}/image",
               c.get("/v1/products/..%2F..%2F..%2Fetc%2Fpasswd/image"))
        record("bad review hash", "/v1/inventory/review/{sha256}",
               c.post("/v1/inventory/review/../../x", json={"label": "a"}, headers=auth))
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--photo", help="a good photo (default: the first grocery val photo)")
    ap.add_argument("--out", default="runs/bench-serve-bad-input")
    ap.add_argument("--no-results", action="store_true")
    ns = ap.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    good = Path(ns.photo).read_bytes() if ns.photo else find_photos(None, limit=1)[0].read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(ns.model, ["--db", str(Path(tmp) / "inventory.sqlite")], log=out / "server.log")
        with server:
            t0 = time.perf_counter()
            results = run_cases(server, good)
            wall = time.perf_counter() - t0
            health = httpx.get(f"{server.url}/healthz").status_code
            ready = httpx.get(f"{server.url}/readyz").status_code
            predict = httpx.post(f"{server.url}/v1/predict", files={"image": ("ok.jpg", good, "image/jpeg")},
                                 timeout=60)
            rss = server.peak_rss_mb()
            alive = server.proc is not None and server.proc.poll() is None
    (out / "bad_input.json").write_text(json.dumps(results, indent=2))
    rows = ["| case | endpoint | status | message |", "|---|---|---|---|"]
    for r in results:
        msg = str(r["detail"]).replace("|", "\\|")[:110]
        rows.append(f"| {r['case']} | `{r['endpoint']}` | {r['status']}{'' if r['ok'] else ' **FAIL**'} | {msg} |")
    passed = sum(r["ok"] for r in results)
    healthy = alive and health == 200 and ready == 200 and predict.status_code == 200
    body = "\n".join([
        f"{len(results)} bad requests against one `skulens serve` (with --db), in {wall:.1f} s.", "", *rows, "",
        (f"Answered 4xx with a message: {passed}/{len(results)}. After all of them: process alive {alive}, "
        f"/healthz {health}, /readyz {ready}, a good photo predicts {predict.status_code} "
        f"({predict.json()['prediction']['label'] if predict.status_code == 200 else 'n/a'}); "
        f"server peak RSS {rss:.0f} MB (the bomb was never decoded)."),
    ])
    print(body)
    if not ns.no_results:
        append_section("Service bad-input set", "python benchmarks/serve_bad_input.py " + shlex.join(sys.argv[1:]),
                       body)
    return 0 if passed == len(results) and healthy else 1


if __name__ == "__main__":
    raise SystemExit(main())
