"""Zones: reading and checking zone files (dnspython + our checks), the compiler that turns them
into one immutable image, saving and mapping images, and the incremental (IXFR) patcher."""
