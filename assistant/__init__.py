"""The session layer: prompts, context, tasks and engine clients."""
