"""Benchmarks: `accept` (acceptance length on HumanEval / MT-Bench, with `datasets` and an HTML
`report`); `speed`, `kernels` and `replay` live in their own modules and are dispatched by `cli`."""
from __future__ import annotations

import sys


def run_as_script(main) -> None:
    """`python -m jetspec_core.bench.<module>`: run main(argv); a JetSpecError is one line, exit 2."""
    from ..errors import JetSpecError

    try:
        sys.exit(main(sys.argv[1:]))
    except JetSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
