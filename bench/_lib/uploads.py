"""``catalogue.py``'s uploads: creating an image, and uploading the test disk (zstd, raw,
sparse, with curl, with a digest) against ``cp --sparse=always`` + fsync and a sink,
with the server's memory and the blocks each upload stored."""

from __future__ import annotations

import contextlib
from pathlib import Path

from _lib.baas import Baas, MemorySampler
from _lib.servers import Sink
from _lib.table import Row
from _lib.testimage import TestImage
from _lib.util import MiB, allocated, log, mb_s, median, read_through, run, sync_all, timed


def measure_create(baas: Baas, repeat: int, size: int) -> Row:
    times, blocks, sizes = [], [], []
    for i in range(repeat):
        seconds, image = timed(lambda i=i: baas.create_image(f"bench-create-{i}"))
        times.append(seconds)
        blocks.append(baas.version_file(image["uuid"], 0).stat().st_blocks)
        sizes.append(image["versions"][0]["size"])
        baas.delete_image(image["uuid"])
    t = median(times)
    ok = t < 1.0 and max(blocks) == 0 and all(s == size for s in sizes)
    detail = f"version 0: {sizes[0] / 2**30:.1f} GiB, st_blocks {max(blocks)}"
    return Row("create 6 GiB image", t, None, None, "< 1 s, 0 blocks", ok, detail,
               {"seconds": times, "st_blocks": blocks})  # fmt: skip


def baseline_copy(image: TestImage, workdir: Path) -> tuple[float, int]:
    """``cp --sparse=always`` of the raw file, then fsync of the copy (as BAAS fsyncs its own)."""
    dst = workdir / "disk" / "cp-baseline.img"
    sync_all()
    seconds, _ = timed(
        lambda: run(
            ["sh", "-c", 'cp --sparse=always --reflink=never "$1" "$2" && sync "$2"', "-",
             str(image.raw), str(dst)]
        )
    )  # fmt: skip
    blocks = allocated(dst)
    dst.unlink()
    return seconds, blocks


def upload_once(
    baas: Baas,
    image: TestImage,
    encoding: str | None,
    name: str,
    digest: bool = False,
    client: str = "sendfile",
) -> dict:
    """One timed upload to a new image. A SHA-256 the answer leaves to the job is then
    recorded by running that job (untimed by the upload, timed on its own) and checked."""
    created = baas.create_image(name)
    sync_all()
    path = image.zst if encoding else image.raw
    sent = image.sha256 if digest else None
    seconds, answer = baas.upload(created["uuid"], path, encoding, sent, client)
    job = None
    recorded = answer.get("sha256")
    if recorded is None and answer.get("version") is not None:
        job, recorded = baas.digest_job(created["uuid"], answer["version"])
    if recorded != image.sha256 or answer.get("size") != image.size:
        raise SystemExit(f"the server stored something else: {answer}, SHA-256 {recorded}")
    stored = baas.version_file(created["uuid"], answer["version"])
    return {"uuid": created["uuid"], "seconds": seconds, "allocated": allocated(stored),
            "path": stored, "job": job}  # fmt: skip


def measure_uploads(baas: Baas, image: TestImage, workdir: Path, repeat: int) -> tuple[list, str]:
    """cp baseline, zstd upload and raw upload, interleaved so noise hits all three alike."""
    read_through(image.raw)
    read_through(image.zst)
    cp_t, zst_t, raw_t, cp_blocks, zst_blocks, raw_blocks = [], [], [], [], [], []
    jobs, digest_t, curl_t, unzstd_t, sink_t = [], [], [], [], []
    sparse_t, sparse_blocks = [], []
    keep_uuid = ""
    sink = Sink()
    sink.start()
    with MemorySampler(baas.proc.pid) as memory, contextlib.closing(sink):
        for i in range(repeat):
            seconds, blocks = baseline_copy(image, workdir)
            cp_t.append(seconds)
            cp_blocks.append(blocks)
            log(f"  cp --sparse=always + sync: {seconds:.2f} s")
            zst = upload_once(baas, image, "zstd", f"bench-zst-{i}")
            zst_t.append(zst["seconds"])
            zst_blocks.append(zst["allocated"])
            baas.delete_image(zst["uuid"])
            jobs.append(zst["job"])
            log(f"  upload zstd: {zst['seconds']:.2f} s (then the SHA-256 job: {zst['job']} s)")
            holes = upload_once(baas, image, None, f"bench-sparse-{i}", client="sparse")
            sparse_t.append(holes["seconds"])
            sparse_blocks.append(holes["allocated"])
            baas.delete_image(holes["uuid"])
            jobs.append(holes["job"])
            log(f"  upload raw without its holes (baas-upload): {holes['seconds']:.2f} s")
            raw = upload_once(baas, image, None, f"bench-raw-{i}")
            raw_t.append(raw["seconds"])
            raw_blocks.append(raw["allocated"])
            jobs.append(raw["job"])
            log(f"  upload raw:  {raw['seconds']:.2f} s (then the SHA-256 job: {raw['job']} s)")
            signed = upload_once(baas, image, None, f"bench-digest-{i}", digest=True)
            digest_t.append(signed["seconds"])
            baas.delete_image(signed["uuid"])
            log(f"  upload raw with Content-Digest: {signed['seconds']:.2f} s")
            curled = upload_once(baas, image, None, f"bench-curl-{i}", client="curl")
            curl_t.append(curled["seconds"])
            baas.delete_image(curled["uuid"])
            log(f"  upload raw with curl -T: {curled['seconds']:.2f} s")
            unzstd_t.append(timed(lambda: run(["sh", "-c", 'zstd -dc "$1" >/dev/null', "-",
                                                str(image.zst)]))[0])  # fmt: skip
            log(f"  zstd -dc > /dev/null: {unzstd_t[-1]:.2f} s")
            sync_all()
            sink_t.append(sink.upload(image.raw))
            log(f"  raw body to a server that discards it: {sink_t[-1]:.2f} s")
            if keep_uuid:
                baas.delete_image(keep_uuid)
            keep_uuid = raw["uuid"]
        hwm = max(memory.worker_hwm(), memory.peak_worker)
        tree = memory.peak_tree
    cp, zs, rw, dg = median(cp_t), median(zst_t), median(raw_t), median(digest_t)
    cu, uz, sk, sp = median(curl_t), median(unzstd_t), median(sink_t), median(sparse_t)
    job = median([j for j in jobs if j is not None]) if any(j is not None for j in jobs) else None
    data = image.data
    rows = [
        Row("upload zstd vs cp+sync", zs, cp, zs / cp, "<= 1.25", zs / cp <= 1.25,
            f"{mb_s(image.size, zs):.0f} MB/s raw, {mb_s(image.zst_size, zs):.0f} MB/s wire; "
            f"cp {mb_s(data, cp):.0f} MB/s of data", {"baas": zst_t, "baseline": cp_t}),
        Row("upload raw, without its holes, vs cp+sync", sp, cp, sp / cp, "<= 2.0",
            sp / cp <= 2.0,
            "contrib/upload/baas-upload: an Android sparse image of the file's data extents "
            "(SEEK_DATA), sent with sendfile; client start-up included",
            {"baas": sparse_t, "baseline": cp_t}),
        Row("upload raw, every byte, vs cp+sync", rw, cp, rw / cp, "<= 2.0", rw / cp <= 2.0,
            f"{mb_s(image.size, rw):.0f} MB/s raw over the wire (all 6 GiB, zeros too)",
            {"baas": raw_t, "baseline": cp_t}),
        Row("  raw body to a sink vs cp+sync", sk, cp, sk / cp, "-", None,
            "loopback TCP alone: the same request to a server that only discards the body",
            {"sink": sink_t, "baseline": cp_t}),
        Row("  upload raw vs the sink", rw, sk, rw / sk, "-", None,
            "what BAAS adds to moving the bytes (mapping, writing, checking)",
            {"baas": raw_t, "sink": sink_t}),
        Row("  zstd -dc > /dev/null vs cp+sync", uz, cp, uz / cp, "-", None,
            "decoding the upload alone, which the server must do to check it",
            {"zstd": unzstd_t, "baseline": cp_t}),
        Row("upload raw with curl -T vs cp+sync", cu, cp, cu / cp, "-", None,
            "curl 7.88 sends through a 64 KiB buffer: the client is the bottleneck",
            {"baas": curl_t, "baseline": cp_t}),
        Row("upload raw + Content-Digest vs cp+sync", dg, cp, dg / cp, "-", None,
            "the server hashes all of the image (zeros too) before it answers",
            {"baas": digest_t, "baseline": cp_t}),
        Row("SHA-256 job after an upload (s)", job, None, None, "-", None,
            "records the whole-image SHA-256 the answer left to it; not part of the upload",
            {"job": jobs}),
        Row("server peak memory (MiB)", hwm / MiB, None, None, "< 150 MiB", hwm < 150 * MiB,
            f"worker VmHWM; master+workers RSS peak {tree / MiB:.0f} MiB",
            {"worker_hwm": hwm, "tree_rss_peak": tree}),
        _blocks_row("stored blocks, raw upload", raw_blocks, data, cp_blocks, True),
        _blocks_row("stored blocks, zstd upload (as sent)", zst_blocks, data, cp_blocks, False),
        _blocks_row("stored blocks, sparse upload", sparse_blocks, data, cp_blocks, False),
    ]  # fmt: skip
    return rows, keep_uuid


def _blocks_row(name: str, blocks: list[int], data: int, cp_blocks: list[int], gate: bool) -> Row:
    stored = max(blocks)
    ratio = stored / data
    return Row(name + " (MiB)", stored / MiB, data / MiB, ratio, "within 5 % of data",
               abs(ratio - 1) <= 0.05 if gate else None,
               f"baseline = data blocks; cp copy allocates {max(cp_blocks) / MiB:.1f} MiB",
               {"allocated": blocks, "data": data, "cp_allocated": cp_blocks})  # fmt: skip
