"""The metadata feed: maps and target liveness published over NATS JetStream, signed with
Ed25519 and validated strictly before anything is applied (paper §3.2, the Communication/Control
System; the lecture's "That's one of ours!": check the format of authenticated messages too)."""
