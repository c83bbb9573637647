import sys

from .kiosk import main

sys.exit(main())
