"""Start JetSpec Studio: `python app.py [--host H] [--port P] [--target T] [--head H] [--device D]`."""
import sys

from app.server import main

if __name__ == "__main__":
    sys.exit(main())
