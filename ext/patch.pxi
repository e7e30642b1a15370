# Incremental image patching (IXFR fast path): see src/pop53/incremental.py.
