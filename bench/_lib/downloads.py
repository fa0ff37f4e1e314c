"""``catalogue.py``'s download: ``GET /api/image/<uuid>/<n>`` against nginx serving the
same stored file, both from a warm page cache, fetched by ``curl -o /dev/null``."""

from __future__ import annotations

from pathlib import Path

from _lib.baas import Baas
from _lib.servers import Nginx
from _lib.table import Row
from _lib.util import log, mb_s, median, read_through, run, timed


def curl_download(url: str, token: str | None, expected: int) -> float:
    cmd = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    seconds, out = timed(lambda: run([*cmd, url]))
    code, size = out.stdout.split()
    if code != "200" or int(size) != expected:
        raise SystemExit(f"download of {url} answered {code} with {size} bytes, not {expected}")
    return seconds


def measure_download(baas: Baas, workdir: Path, uuid: str, repeat: int) -> Row:
    """GET /api/image/<uuid>/<n> vs nginx on the same file, both warm, curl -o /dev/null."""
    number = max(int(p.name.split(".")[0]) for p in (baas.disk / uuid).glob("*.img"))
    path = baas.version_file(uuid, number)
    size = path.stat().st_size
    nginx = Nginx(workdir, path.parent)
    nginx.start()
    try:
        read_through(path)  # warm: both serve from the page cache
        ours, theirs = [], []
        for _ in range(repeat):
            theirs.append(curl_download(f"http://127.0.0.1:{nginx.port}/{path.name}", None, size))
            ours.append(curl_download(baas.url(f"/api/image/{uuid}/{number}"), baas.token, size))
            log(f"  download: BAAS {ours[-1]:.2f} s, nginx {theirs[-1]:.2f} s")
    finally:
        nginx.stop()
    b, n = median(ours), median(theirs)
    return Row("download vs nginx (throughput)", b, n, n / b, ">= 0.9", n / b >= 0.9,
               f"BAAS {mb_s(size, b):.0f} MB/s, nginx {mb_s(size, n):.0f} MB/s; warm cache",
               {"baas": ours, "baseline": theirs})  # fmt: skip
