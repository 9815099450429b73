"""Built-in env adapters (Meta-World, PushT); each imports its simulator lazily."""
