import sys

from training.sim.build import main

sys.exit(main())
