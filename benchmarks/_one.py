"""Entry point of one measurement: ``python -m benchmarks._one --executor K --workload W ...``.

multiprocessing re-runs the main module in every worker it starts with spawn or
forkserver (as ``__mp_main__``), and so in every worker a recycling pool starts.
This module is that main module, so it imports nothing at its top level: the
harness itself lives in ``benchmarks._measure``, imported only when this runs
as ``__main__``. A worker's start then costs what the pool itself costs, not
the harness's imports (about 70 ms of them).
"""

import sys

if __name__ == "__main__":
    from benchmarks._measure import main

    sys.exit(main())
