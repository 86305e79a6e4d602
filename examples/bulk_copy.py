#!/usr/bin/env python3
"""Copy a file from one process to another over an ``ombm.Stream``, with a progress bar.

A spawned sender process reads the source in 1 MiB chunks and sends each as one stream
message; this process receives them in order, writes the destination and shows the progress
(rich).  The stream is reliable: every chunk is checksummed in the copy out of the segment
(paper §4, "checksum folded into the copy"), repaired if it was damaged, and a reader that
falls behind (a slow disk) slows the sender down instead of losing data.  At the end both
sides' SHA-256 are compared.

    python examples/bulk_copy.py SOURCE DEST
    python examples/bulk_copy.py              # copies a generated 256 MiB file in a temp folder

(with ombm installed: ``pip install .``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import tempfile
import time

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from ombm.channels.stream import Stream

CHUNK = 1 << 20


def sender(name: str, path: str, ready) -> None:
    """Create the stream, then send: a header (size), the chunks, the SHA-256; then close."""
    with Stream.create(name, slot_bytes=CHUNK, slots=16) as stream:
        ready.put(os.getpid())
        size = os.path.getsize(path)
        stream.send(json.dumps({"name": os.path.basename(path), "size": size}).encode())
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):  # bytes: the stream keeps a reference, no extra copy
                digest.update(chunk)
                stream.send(chunk, timeout=60)
        stream.send(digest.hexdigest().encode())
        stream.flush(60)  # everything arrived before we end the stream


def receive(name: str, dest: str, console: Console) -> tuple[str, str, int]:
    with Stream.open(name, timeout=30) as stream:
        header = json.loads(bytes(stream.recv(30)))
        size = header["size"]
        digest = hashlib.sha256()
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())
        with open(dest, "wb") as out, Progress(*columns, console=console) as progress:
            task = progress.add_task(header["name"], total=size)
            done = 0
            while done < size:
                chunk = stream.recv(60)
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                progress.update(task, completed=done)
        theirs = bytes(stream.recv(60)).decode()
        return digest.hexdigest(), theirs, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?")
    parser.add_argument("dest", nargs="?")
    parser.add_argument("--size-mib", type=int, default=256, help="size of the generated file without SOURCE")
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="ombm-bulk-copy-") as tmp:
        source = args.source
        if source is None:
            source = os.path.join(tmp, "source.bin")
            with open(source, "wb") as f:
                block = os.urandom(CHUNK)
                for i in range(args.size_mib):
                    f.write(block[i % 7:] + block[:i % 7])
        dest = args.dest or os.path.join(tmp, "copy.bin")
        ctx = mp.get_context("spawn")
        ready = ctx.Queue()
        name = f"bulk-copy-{os.getpid()}"
        child = ctx.Process(target=sender, args=(name, source, ready), daemon=True)
        try:
            child.start()
            ready.get(timeout=30)
            start = time.perf_counter()
            ours, theirs, size = receive(name, dest, console)
            elapsed = time.perf_counter() - start
            child.join(30)
        finally:
            if child.is_alive():
                child.kill()
                child.join()
        ok = ours == theirs
        console.print(f"{size / 2**20:.0f} MiB in {elapsed:.2f} s ({size / elapsed / 1e9:.2f} GB/s); "
                      f"SHA-256 {'matches' if ok else '[red]DIFFERS[/red]'}: {ours[:16]}…")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
