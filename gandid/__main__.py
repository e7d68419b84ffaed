"""``python -m gandid`` (what ``torchrun -m gandid run ...`` starts in each process)."""
import sys

from .cli import main

sys.exit(main())
