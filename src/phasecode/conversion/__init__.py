"""Turning an ANN into its spiking equivalent: site handlers and the model surgery."""
