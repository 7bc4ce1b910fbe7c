"""The decoder-only model: config, layers, attention, decoder, loss."""
