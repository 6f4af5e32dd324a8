"""Test helpers that ship with objbutler: the store conformance suite, wrapper stores, servers."""
