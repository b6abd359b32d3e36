"""Layer and model benchmark; the same as ``hypermixer bench`` (see hypermixer/bench.py).

    python benchmarks/bench.py [--quick] [--threads 1 2] [--json bench.json] [--png bench.png]
"""

import sys

from hypermixer.bench import main

if __name__ == "__main__":
    sys.exit(main())
