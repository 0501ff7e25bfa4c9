"""Layer 3: hardware catalog, memory/performance models, search and recipe rendering (issue #4)."""
