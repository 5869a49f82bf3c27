"""Reliability and security tests: faults injected into real components, a generated bad-input corpus, hostile
ids, unsafe checkpoints and leaked credentials (docs/reliability.md)."""
