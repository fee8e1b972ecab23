"""Evaluation: perplexity of the ANN and of the spiking model on the same token windows."""
