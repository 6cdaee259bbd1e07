"""The model engine: configs, decoder, loading, tokenizer, generation."""
