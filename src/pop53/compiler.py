"""`python -m pop53.compiler` (kept for tools that call it): the compiler lives in
`pop53.zone.compiler`."""
from pop53.zone.compiler import *  # noqa: F401,F403
from pop53.zone.compiler import compile_zone_data, compile_zones, main  # noqa: F401

if __name__ == "__main__":
    import sys

    sys.exit(main())
