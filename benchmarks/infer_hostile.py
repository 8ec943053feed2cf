"""Peak memory of `retinanet infer --skip-unreadable` over good films, then over the same films mixed
with hostile files of every kind (tests/hostile_files.py's fuzz campaign, and full-size bombs).

    python benchmarks/infer_hostile.py --run-dir runs/demo-... --films data/rsna_synthetic/stage_2_test_images \
        --work /tmp/hostile

Each infer runs in a process of its own; its peak resident size is the kernel's (ru_maxrss of the
child). The hostile directory's submission must hold every good film, and skipped_images.csv every
hostile file with its reason.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

REPOSITORY = Path(__file__).resolve().parents[1]


def full_size_bombs(seeds: dict, directory: Path) -> list[Path]:
    """The bombs at the sizes that took a run down: frames declaring 65535 x 65535 (JPEG, JPEG-LS,
    JPEG 2000), a consistent 16384 x 16384 JPEG header, a Deflate body inflating to 2 GiB."""
    import pydicom
    from hostile_files import deflate_bomb, stream_size_bomb

    bombs = [stream_size_bomb(seeds[name], directory / f"bomb-{name}.dcm") for name in
             ("film_jpeg", "mr_jpeg_ls", "mr_jpeg2000")]
    large = stream_size_bomb(seeds["film_jpeg"], directory / "bomb-16384.dcm", 16384, 16384)
    dataset = pydicom.dcmread(large)
    dataset.Rows = dataset.Columns = 16384
    dataset.save_as(large)
    return [*bombs, large, deflate_bomb(directory / "bomb-deflate.dcm", 2048)]


def infer(run_dir: Path, images: Path, output: Path) -> tuple[float, float, int]:
    """(seconds, peak RSS MiB of the child, exit status) of one infer over `images`."""
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    completed = subprocess.run([sys.executable, "-m", "retinanet", "infer", "--run-dir", str(run_dir), "--input",
                                str(images), "--output", str(output), "--skip-unreadable", "--no-progress"],
                               capture_output=True, text=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if completed.returncode:
        print(completed.stderr[-2000:], file=sys.stderr)
    # ru_maxrss of children is the largest of any child so far: the films-only run goes first.
    return time.perf_counter() - started, max(peak, before) / 1024, completed.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--films", type=Path, required=True, help="a directory of good DICOM films")
    parser.add_argument("--work", type=Path, required=True, help="a scratch directory (emptied)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPOSITORY / "tests"))  # the hostile-file generator lives beside the tests
    from hostile_files import write_campaign

    shutil.rmtree(args.work, ignore_errors=True)
    good, hostile = args.work / "good", args.work / "hostile"
    good.mkdir(parents=True)
    films = sorted(args.films.glob("*.dcm"))
    for film in films:
        shutil.copyfile(film, good / film.name)
    shutil.copytree(good, hostile)
    campaign = args.work / "campaign"
    write_campaign(campaign)
    mutants = sorted((campaign / "mutants").glob("*.dcm"))
    for mutant in mutants:
        shutil.copyfile(mutant, hostile / mutant.name)
    seeds = {path.stem: path for path in (campaign / "seeds").glob("*.dcm")}
    bombs = full_size_bombs(seeds, hostile)
    seconds, peak, status = infer(args.run_dir, good, args.work / "out-good")
    print(f"good films only: {len(films)} files, exit {status}, {seconds:.1f} s, peak RSS {peak:,.0f} MiB")
    seconds, peak, status = infer(args.run_dir, hostile, args.work / "out-hostile")
    skipped = pd.read_csv(args.work / "out-hostile" / "skipped_images.csv")
    submission = pd.read_csv(args.work / "out-hostile" / "submission.csv", keep_default_na=False)
    print(f"films + {len(mutants)} mutants + {len(bombs)} full-size bombs: {len(films) + len(mutants) + len(bombs)} "
          f"files, exit {status}, {seconds:.1f} s, peak RSS {peak:,.0f} MiB; {len(skipped)} skipped with their "
          f"reasons, {len(submission)} submission rows, every good film in it: "
          f"{set(path.stem for path in films) <= set(submission['patientId'])}")
    from retinanet.runtime.hardware import NOTABLE_CPU_FLAGS, available_cores, read_cpu

    model, flags = read_cpu()
    print(f"machine: {model}, {available_cores()} cores, {', '.join(f for f in NOTABLE_CPU_FLAGS if f in flags)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
