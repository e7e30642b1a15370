"""Serving: the server (sockets, workers, publish, reclaim, reload, privilege drop), TCP, the
control socket and the metrics endpoint."""
