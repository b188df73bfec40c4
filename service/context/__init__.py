"""Context for the LLM serving layer: prompts whose prefixes an engine's KV cache reuses,
named by the engine's own block hashes."""
