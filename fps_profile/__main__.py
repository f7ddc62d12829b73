import sys

from fps_profile.cli import main

sys.exit(main())
