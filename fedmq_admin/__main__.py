import sys

from fedmq_admin.cli import main

sys.exit(main())
