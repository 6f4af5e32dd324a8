"""Test helpers that ship with objbutler, for people writing their own stores: the store conformance suite,
wrapper stores (counting, fault-injecting), the fault proxy and workloads. The servers the project's own
tests run against are a development package outside the wheel (the repository's ``localstack/`` folder)."""
