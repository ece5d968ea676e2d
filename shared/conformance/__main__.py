"""``python -m shared.conformance --out spec/vectors`` writes the vectors; ``--check`` compares instead."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from shared.conformance.vectors import generate, render

log = logging.getLogger("fedmq.conformance")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("spec/vectors"), help="folder of the JSON files")
    parser.add_argument("--check", action="store_true", help="fail if a committed file differs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("shared").setLevel(logging.WARNING)  # the recorded round's own protocol logs
    stale = []
    for name, vectors in generate().items():
        path = args.out / f"{name}.json"
        text = render(vectors)
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        log.info("wrote %s (%d bytes)", path, len(text))
    for path in stale:
        log.error("%s differs from what the code produces; regenerate it deliberately", path)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
