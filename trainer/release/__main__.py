import sys

from trainer.release.upload import main

sys.exit(main())
