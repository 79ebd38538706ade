"""Pack an LJSpeech-layout root into what a GPU call can carry: `python recipes/ljspeech/pack_gpu_data.py SRC`.

A call to the GPU machine sends the working tree (tracked files, untracked files git does not ignore, and the
ignored paths named in `carry`) up to 64 MiB in all. The tree itself is most of that (the shipped checkpoints
alone are ~48 MB at float32), so the data set travels as lossless FLAC, and only as much of it as fits:

  * every validation clip (the last --n-valid lines of SRC/metadata.csv), so held-out figures are the real ones;
  * training clips in metadata order while the budget lasts; a clip the repository already holds with the same
    samples (tests/data/ljspeech: 33 of the mini set's training clips) costs nothing: it is listed in
    OUT/reuse.txt and gpu_continue.sh copies it from there on the GPU machine.

The budget is 64 MiB less the tree (git ls-files: tracked and untracked-not-ignored files, measured now), the
wheels in .whl/ (measured now) and --margin-mib. OUT/metadata.csv keeps SRC's order with the validation clips
last, so wavflow.data's split gives the same validation set. OUT must be ignored by git (it is added to
.git/info/exclude when it is not), or it would travel twice and show up in `git status`.

The last line printed says how many training clips and seconds were packed and the travelling total.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from wavflow.data import find_audio, read_metadata, split_ids
from wavflow.errors import WavflowError
from wavflow.fileio import atomic_write

MIB = 2**20


def travelling_bytes(repo: Path, exclude: list[Path]) -> int:
    """Bytes of the files a GPU call sends without `carry`: tracked, and untracked that git does not ignore."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode()
    total = 0
    for name in filter(None, out.split("\0")):
        path = repo / name
        if any(path.is_relative_to(e) for e in exclude):
            continue
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def ensure_ignored(repo: Path, path: Path) -> None:
    rel = path.resolve().relative_to(repo.resolve())
    ignored = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", str(rel / "x")]).returncode == 0
    if not ignored:
        top = f"/{rel.parts[0]}/"
        exclude = repo / ".git" / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        with open(exclude, "a", encoding="utf-8") as f:
            f.write(f"{top}\n")
        print(f"added {top} to {exclude} (the packed data must not travel untracked or be committed)")


def flac_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[2]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", type=Path, help="LJSpeech-layout root (metadata.csv + wavs/), e.g. LJSpeech-1.1-mini")
    p.add_argument("--out", type=Path, default=repo / ".gpudata" / "LJSpeech-1.1-mini")
    p.add_argument("--n-valid", type=int, default=20)
    p.add_argument("--reuse", type=Path, default=repo / "tests" / "data" / "ljspeech",
                   help="a root inside the repository whose identical clips need not be packed")
    p.add_argument("--limit-mib", type=float, default=64.0, help="what a GPU call may send in all")
    p.add_argument("--margin-mib", type=float, default=1.0, help="left free for files added before the call")
    p.add_argument("--wheels", type=Path, default=repo / ".whl", help="the carried wheels, counted in the total")
    args = p.parse_args(argv)

    out = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        raise WavflowError(f"{out}: exists and is not empty; remove it first (packing starts from nothing)")
    if out.is_relative_to(repo.resolve()):
        ensure_ignored(repo, out)
    items = read_metadata(args.src)
    train, valid = split_ids(items, "train", args.n_valid), split_ids(items, "valid", args.n_valid)
    tree = travelling_bytes(repo, [out])
    wheels = folder_bytes(args.wheels)
    budget = int((args.limit_mib - args.margin_mib) * MIB) - tree - wheels
    print(f"travelling without data: tree {tree / MIB:.1f} MiB + wheels {wheels / MIB:.1f} MiB; "
          f"data budget {budget / MIB:.1f} MiB")

    reusable: dict[str, Path] = {}
    if args.reuse.is_dir() and (args.reuse / "metadata.csv").is_file():
        for clip_id, _ in read_metadata(args.reuse):
            reusable[clip_id] = find_audio(args.reuse, clip_id)

    def read(path: Path) -> tuple[np.ndarray, int]:
        audio, sr = sf.read(str(path), dtype="int16")
        return audio, sr

    packed: dict[str, bytes] = {}
    used = 0
    for clip_id, _ in valid:  # the validation set is packed whole, whatever it costs
        audio, sr = read(find_audio(args.src, clip_id))
        packed[clip_id] = flac_bytes(audio, sr)
        used += len(packed[clip_id])
    if used > budget:
        raise WavflowError(f"the {len(valid)} validation clips alone need {used / MIB:.1f} MiB of a "
                           f"{budget / MIB:.1f} MiB budget")
    kept: list[str] = []
    reused: list[str] = []
    seconds = 0.0
    for clip_id, _ in train:
        audio, sr = read(find_audio(args.src, clip_id))
        if clip_id in reusable:
            theirs, their_sr = read(reusable[clip_id])
            if their_sr == sr and np.array_equal(theirs, audio):
                reused.append(clip_id)
                kept.append(clip_id)
                seconds += len(audio) / sr
                continue
        data = flac_bytes(audio, sr)
        if used + len(data) > budget:
            continue  # a shorter clip later may still fit
        packed[clip_id] = data
        used += len(data)
        kept.append(clip_id)
        seconds += len(audio) / sr

    (out / "wavs").mkdir(parents=True, exist_ok=True)
    for clip_id, data in packed.items():
        atomic_write(out / "wavs" / f"{clip_id}.flac", lambda f, d=data: f.write(d))
    text = dict(items)
    lines = [f"{i}|{text[i]}|{text[i]}\n" for i in kept] + [f"{i}|{text[i]}|{text[i]}\n" for i, _ in valid]
    atomic_write(out / "metadata.csv", lambda f: f.write("".join(lines).encode("utf-8")))
    reuse_root = os.path.relpath(args.reuse.resolve(), repo.resolve())  # gpu_continue.sh runs in the repository
    shown = os.path.relpath(out, repo) if out.is_relative_to(repo.resolve()) else str(out)
    atomic_write(out / "reuse.txt", lambda f: f.write((f"{reuse_root}\n" + "".join(f"{i}\n" for i in reused)).encode()))
    total = tree + wheels + folder_bytes(out)
    print(f"{out}: {len(kept)} of {len(train)} training clips ({seconds / 60:.1f} min, {len(reused)} reused from "
          f"{reuse_root}) + {len(valid)} validation clips; data {folder_bytes(out) / MIB:.1f} MiB; a call with "
          f"carry [.whl, {shown}] sends {total / MIB:.1f} MiB of {args.limit_mib:g}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except WavflowError as e:
        sys.stderr.write(f"pack_gpu_data.py: error: {e}\n")
        sys.exit(2)
